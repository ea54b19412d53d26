"""``regode register``: MS-ODENet registration."""

from __future__ import annotations

from dataclasses import asdict

from ..odenet.config import SPEC
from ..options.cli import command, keyword
from .app import app, user_errors

OUT = keyword("out", str, "--out", "-o", help="Output prefix: PREFIXWarped.nii.gz, PREFIX0GenericAffine.mat, "
              "PREFIX1Warp.nii.gz, ...")  # fmt: skip


def run(resolved, out: str) -> None:
    """Register MOVING to FIXED with MS-ODENet; writes ANTs-named transforms and images."""
    from ..pipeline import register_files

    files, config = resolved["inputs"], resolved["config"]
    doc = register_files(
        files.fixed,
        files.moving,
        out,
        config,
        files.moving_labels,
        qc=files.qc,
        record={"inputs": asdict(files), "preset": resolved.preset, "sources": resolved.sources},
    )
    t = doc["timings_s"]
    print(
        f"registered {' + '.join(files.moving)} to {' + '.join(files.fixed)} with {config.model} "
        f"in {t['wall']:.2f} s (model "
        f"{t['total']:.2f} s); "
        f"outputs {out}*  NFE {doc['nfe']}"
    )


register = app.command("register")(user_errors(command("register", SPEC, run, [OUT], run.__doc__, with_preset=True)))
