"""``regode fit-field``: per-pair neural-field registration (NIR)."""

from __future__ import annotations

from dataclasses import asdict

from ..nir.config import SPEC
from ..options.cli import command, keyword
from .app import QUIET, app, user_errors

OUT = keyword("out", str, "--out", "-o", help="Output prefix: PREFIX1Warp.nii.gz, PREFIX1InverseWarp.nii.gz, "
              "PREFIX0GenericAffine.mat, PREFIXWarped.nii.gz, ...")  # fmt: skip


def run(resolved, out: str, quiet: bool = False) -> None:
    """Register MOVING to FIXED by fitting a neural field to this pair (NIR); writes ANTs-named outputs."""
    from ..pipeline import fit_files

    files, config = resolved["inputs"], resolved["config"]
    doc = fit_files(
        files.fixed,
        files.moving,
        out,
        config,
        files.moving_labels,
        progress=not quiet,
        qc=files.qc,
        record={"inputs": asdict(files), "preset": resolved.preset, "sources": resolved.sources},
    )
    t = doc["timings_s"]
    print(
        f"fitted {files.moving[0]} to {files.fixed[0]} ({config.sampler} sampler, {config.metric}) "
        f"in {t['wall']:.2f} s "
        f"(fit {t['total']:.2f} s); outputs {out}*"
    )


fit_field = app.command("fit-field")(
    user_errors(command("fit-field", SPEC, run, [OUT, QUIET], run.__doc__, with_preset=True))
)
