"""``regode bench``: registration methods against exact ground truth (or between subjects)."""

from __future__ import annotations

from pathlib import Path

from ..bench.config import SPEC
from ..options.cli import command, keyword
from .app import QUIET, app, user_errors

OUT = keyword("out", Path | None, "--out", default=None,
              help="Output prefix for PREFIX.json and PREFIX.md (default bench_<task>).")  # fmt: skip


def run(resolved, out: Path | None = None, quiet: bool = False) -> None:
    """Benchmark registration methods on synthetic motion with exact ground truth (or inter-subject)."""
    import os
    from dataclasses import replace

    config = resolved["config"]
    threads = config.threads or os.cpu_count() or 1
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(
        threads
    )  # ANTs, read when ITK starts: before any import of it
    from ..bench.run import run as run_bench

    run_bench(
        replace(config, threads=threads), out or Path(f"bench_{config.task.replace('+', '_')}"), progress=not quiet
    )


bench = app.command("bench")(user_errors(command("bench", SPEC, run, [OUT, QUIET], run.__doc__)))
