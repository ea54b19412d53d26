"""``regode brain-extract``: the brain of a T1-weighted head (deepbet), in antsBrainExtraction.sh's names."""

from __future__ import annotations

from dataclasses import asdict

from ..config import BRAIN_SPEC
from ..options.cli import command, keyword
from .app import app, user_errors

OUT = keyword(
    "out", str, "--out", "-o",
    help="Output prefix: PREFIXBrainExtractionBrain.nii.gz, PREFIXBrainExtractionMask.nii.gz, PREFIXqc.png, "
    "PREFIXregode.json.",
)  # fmt: skip


def run(resolved, out: str) -> None:
    """Extract the brain of a T1-weighted head with deepbet: the brain and its mask on the head's grid."""
    from ..heads import extract_files

    files, config = resolved["inputs"], resolved["config"]
    doc = extract_files(
        files.input, out, config, files.qc, record={"inputs": asdict(files), "sources": resolved.sources}
    )
    print(
        f"extracted the brain of {files.input} in {doc['timings_s']['wall']:.2f} s: {doc['brain_volume_ml']:.0f} mL; "
        f"outputs {out}*"
    )


brain_extract = app.command("brain-extract")(user_errors(command("brain-extract", BRAIN_SPEC, run, [OUT], run.__doc__)))
