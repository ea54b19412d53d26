"""``regode warp``: an antsApplyTransforms for regode users."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import INTERPOLATIONS
from .app import app, choices, user_errors

Interp = choices("Interp", INTERPOLATIONS)


@app.command()
@user_errors
def warp(
    input: Annotated[Path, typer.Option("--input", "-i", help="Image to resample (moving space).")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Image whose grid the output takes (fixed space), or mni152 (the MNI ICBM152 2009 template's grid).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output image (.nii.gz, .nii, .mha, .mhd, .nrrd).")],
    transform: Annotated[
        Optional[list[str]],
        typer.Option(
            "--transform",
            "-t",
            help="Transform file, repeatable, in antsApplyTransforms order: the last -t moves the image "
            "first (e.g. -t 1Warp.nii.gz -t 0GenericAffine.mat). '[file.mat,1]' inverts a linear "
            "transform. None: identity (plain resampling).",
        ),
    ] = None,
    interp: Annotated[Interp, typer.Option("--interp", "-n", help="label = ANTs GenericLabel (no new labels).")] = Interp("linear"),
    default_value: Annotated[float, typer.Option("--default-value", help="Value outside the input image.")] = 0.0,
    threads: Annotated[Optional[int], typer.Option("--threads", min=0, help="CPU threads (default: all cores).")] = None,
) -> None:
    """Resample an image through ITK/ANTs transforms, like antsApplyTransforms."""
    from ..api import warp_files

    warp_files(input, reference, output, transform or [], Interp(interp).value, default_value, threads)
