"""``regode bench``: registration methods against exact ground truth (or between subjects)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..bench.config import ALL_TASKS, PAIRINGS, BenchConfig, MotionConfig
from .app import app, choices, user_errors

Task = choices("Task", ALL_TASKS)
Pairing = choices("Pairing", PAIRINGS)
B, M = BenchConfig, MotionConfig  # the defaults below are theirs


@app.command()
@user_errors
def bench(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder: DIR/<subject>/<contrast>.nii.gz (+ seg/labels).")],
    task: Annotated[Task, typer.Option("--task", help="Synthetic motion to undo, or inter-subject: pairs of subjects (a folder of one subject: itself moved by a known affine and deformation).")] = Task(B.task),
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: identity, ants:Rigid, ants:SyN, ants:SyNRA, regode:rigid, regode:rigid+bspline, regode:nir, ...")] = ",".join(B.methods),
    pairs: Annotated[int, typer.Option("--pairs", help="Number of cases.")] = B.pairs,
    seed: Annotated[int, typer.Option("--seed", help="Seed of cases, motion and methods.")] = B.seed,
    resolution: Annotated[float, typer.Option("--resolution", help="Isotropic working spacing in mm (0: native).")] = B.resolution,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for every method (0: all cores).")] = B.threads,
    contrasts: Annotated[Pairing, typer.Option("--contrasts", help="Synthetic-motion tasks: moving image of another contrast (multi-modal) or the same one.")] = Pairing(B.contrasts),
    max_rotation: Annotated[float, typer.Option(help="Rigid task: rotations U(-a, a) degrees per axis.")] = M.max_rotation,
    max_translation: Annotated[float, typer.Option(help="Rigid task: translations U(-t, t) mm per axis.")] = M.max_translation,
    hybrid_max_rotation: Annotated[float, typer.Option(help="rigid+deformable: rotation range (degrees).")] = M.hybrid_max_rotation,
    hybrid_max_translation: Annotated[float, typer.Option(help="rigid+deformable: translation range (mm).")] = M.hybrid_max_translation,
    bspline_sigma: Annotated[float, typer.Option(help="Deformable: control-point displacement sd (mm).")] = M.bspline_sigma,
    control_spacing: Annotated[float, typer.Option(help="Deformable: B-spline control spacing (mm).")] = M.control_spacing,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output prefix for PREFIX.json and PREFIX.md (default bench_<task>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Benchmark registration methods on synthetic motion with exact ground truth (or inter-subject)."""
    import os

    from ..errors import RegodeError

    if threads < 0:
        raise RegodeError(f"--threads must be a number of threads (0: all cores), not {threads}")
    threads = threads or os.cpu_count() or 1
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)  # ANTs, read when ITK starts: before any import of it
    from ..bench.run import run

    config = BenchConfig(
        data=str(data), task=task.value, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), pairs=pairs,
        seed=seed, resolution=resolution or None, threads=threads, contrasts=contrasts.value,
        motion=MotionConfig(max_rotation, max_translation, hybrid_max_rotation, hybrid_max_translation, bspline_sigma, control_spacing),
    )

    run(config, out or Path(f"bench_{task.value.replace('+', '_')}"), progress=not quiet)
