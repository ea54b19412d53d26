"""The ``regode`` command line: thin commands over the library (heavy imports inside them)."""

from __future__ import annotations

import enum
import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

app = typer.Typer(
    name="regode",
    help="3D brain MRI registration with learned neural-ODE models and neural fields; ANTs-compatible files.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class Interp(str, enum.Enum):
    linear = "linear"
    nearest = "nearest"
    label = "label"
    bspline = "bspline"


def user_errors(fn: Callable) -> Callable:
    """Turn a RegodeError into one ``regode: error: ...`` line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import RegodeError

        try:
            return fn(*args, **kwargs)
        except RegodeError as exc:
            print(f"regode: error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@user_errors
def warp(
    input: Annotated[Path, typer.Option("--input", "-i", help="Image to resample (moving space).")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Image whose grid the output takes (fixed space).")],
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
    interp: Annotated[Interp, typer.Option("--interp", "-n", help="label = ANTs GenericLabel (no new labels).")] = Interp.linear,
    default_value: Annotated[float, typer.Option("--default-value", help="Value outside the input image.")] = 0.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
) -> None:
    """Resample an image through ITK/ANTs transforms, like antsApplyTransforms."""
    import torch

    from .io import load_transform_chain, read_image, write_image
    from .io.images import read_grid
    from .io.atomic import check_writable
    from .warp import resample

    if threads:
        torch.set_num_threads(threads)
    check_writable(output)
    image = read_image(input, components=None, what="input image")
    ref_grid = read_grid(reference, what="reference image")
    chain = load_transform_chain(transform or [])
    if interp == Interp.label and image.data.shape[1] != 1:
        from .errors import RegodeError

        raise RegodeError(f"label interpolation needs a scalar label image, {input} has vectors")
    out = resample(image.data, image.grid, ref_grid, chain, interp.value, default_value)
    write_image(out, ref_grid, output, image.dtype)


@app.command()
@user_errors
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Keep the generated files in this folder.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run regode on generated data (no input files needed) and print what it recovered."""
    from .demo import run_demo

    run_demo(out, seed)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
