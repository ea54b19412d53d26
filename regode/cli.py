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

    from .io import load_transform_chain, read_grid, read_image, write_image
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


class Task(str, enum.Enum):
    rigid = "rigid"
    deformable = "deformable"
    hybrid = "rigid+deformable"
    inter = "inter-subject"


@app.command()
@user_errors
def bench(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder: DIR/<subject>/<contrast>.nii.gz (+ seg/labels).")],
    task: Annotated[Task, typer.Option("--task", help="Synthetic motion to undo, or inter-subject pairs.")] = Task.rigid,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: identity, ants:Rigid, ants:SyN, ants:SyNRA, ...")] = "identity",
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Number of cases.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of cases, motion and methods.")] = 0,
    resolution: Annotated[float, typer.Option("--resolution", help="Isotropic working spacing in mm (0: native).")] = 2.0,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for every method (0: all cores).")] = 0,
    max_rotation: Annotated[float, typer.Option(help="Rigid task: rotations U(-a, a) degrees per axis.")] = 75.0,
    max_translation: Annotated[float, typer.Option(help="Rigid task: translations U(-t, t) mm per axis.")] = 20.0,
    hybrid_max_rotation: Annotated[float, typer.Option(help="rigid+deformable: rotation range (degrees).")] = 40.0,
    hybrid_max_translation: Annotated[float, typer.Option(help="rigid+deformable: translation range (mm).")] = 10.0,
    bspline_sigma: Annotated[float, typer.Option(help="Deformable: control-point displacement sd (mm).")] = 8.0,
    control_spacing: Annotated[float, typer.Option(help="Deformable: B-spline control spacing (mm).")] = 40.0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output prefix for PREFIX.json and PREFIX.md (default bench_<task>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Benchmark registration methods on synthetic motion with exact ground truth (or inter-subject)."""
    import os

    threads = threads or os.cpu_count() or 1
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)  # ANTs, read when ITK starts
    import torch

    torch.set_num_threads(threads)
    from .bench.motion import MotionConfig
    from .bench.run import BenchConfig, run

    config = BenchConfig(
        data=str(data), task=task.value, methods=[m.strip() for m in methods.split(",") if m.strip()], pairs=pairs,
        seed=seed, resolution=resolution or None, threads=threads,
        motion=MotionConfig(max_rotation, max_translation, hybrid_max_rotation, hybrid_max_translation, bspline_sigma, control_spacing),
    )
    run(config, out or Path(f"bench_{task.value.replace('+', '_')}"), progress=not quiet)


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
