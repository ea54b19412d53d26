"""``regode warp``: an antsApplyTransforms for regode users."""

from __future__ import annotations

from ..config import WARP_SPEC
from ..options.cli import command, keyword
from .app import app, user_errors

OUTPUT = keyword("output", str, "--output", "-o", help="Output image (.nii.gz, .nii, .mha, .mhd, .nrrd).")


def run(resolved, output: str) -> None:
    """Resample an image through ITK/ANTs transforms, like antsApplyTransforms."""
    from ..api import warp_files

    c = resolved["config"]
    warp_files(c.input, c.reference, output, list(c.transforms), c.interp, c.default_value, c.threads)


warp = app.command("warp")(user_errors(command("warp", WARP_SPEC, run, [OUTPUT], run.__doc__)))
