"""``regode demo``: register a generated pair with known motion."""

from __future__ import annotations

from pathlib import Path

from ..odenet.config import DEMO_SPEC
from ..options.cli import command, keyword
from .app import app, user_errors

OUT = keyword("out", Path | None, "--out", default=None, help="Keep the generated files in this folder.")


def run(resolved, out: Path | None = None) -> None:
    """Register a generated two-contrast pair with known motion (no input files needed) and print the error."""
    from ..demo import run_demo

    c = resolved["config"]
    run_demo(out, c.seed, c.model, c.threads, c.checkpoints)


demo = app.command("demo")(user_errors(command("demo", DEMO_SPEC, run, [OUT], run.__doc__)))
