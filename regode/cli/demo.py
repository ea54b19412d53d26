"""``regode demo``: register a generated pair with known motion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..odenet.config import MODELS, RegisterConfig
from .app import app, choices, user_errors

Model = choices("Model", MODELS)


@app.command()
@user_errors
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Keep the generated files in this folder.")] = None,
    model: Annotated[Model, typer.Option("--model", help="MS-ODENet stages to run.")] = Model(RegisterConfig.model),
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", help="Model file from `regode train` replacing the shipped one of its kind (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = RegisterConfig.seed,
    threads: Annotated[Optional[int], typer.Option("--threads", min=0, help="CPU threads (default: all cores).")] = None,
) -> None:
    """Register a generated two-contrast pair with known motion (no input files needed) and print the error."""
    from ..demo import run_demo

    run_demo(out, seed, model.value, threads, tuple(str(p) for p in checkpoint or ()))
