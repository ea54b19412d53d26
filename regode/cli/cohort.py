"""``regode cohort``: every registration of a manifest, on Dask, resumable, with QC and a report."""

from __future__ import annotations

import inspect
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ..cohort.config import SPEC
from ..options.cli import command, keyword
from .app import QUIET, app, user_errors

MANIFEST = inspect.Parameter(
    "manifest",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[
        Path, typer.Argument(help="CSV with columns id, fixed, moving[, moving_labels, command, options].")
    ],
)
OUT = keyword("out", Path, "--out", "-o", help="Output folder: OUT/ID/ID_* per row, OUT/summary.csv, OUT/report.html.")


def run(resolved, manifest: Path, out: Path, quiet: bool = False) -> None:
    """Register every row of MANIFEST (a CSV), in-process on Dask workers; resumable; QC and report."""
    from ..cohort import report
    from ..cohort.manifest import read_manifest
    from ..cohort.run import Engine, run_cohort, run_row, summary_line
    from ..errors import RegodeError

    c = resolved["config"]
    if out.exists() and not out.is_dir():
        raise RegodeError(f"--out {out} is a file, not a folder")
    rows = read_manifest(manifest, out, c.command, c.options, c.qc, c.bids)
    # every row runs with the cohort's --threads: its record says where that came from
    rows = [replace(r, sources={**r.sources, "threads": resolved.sources["threads"]}) for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    if c.bids:
        from ..cohort.report import dataset_description

        dataset_description(out)
    if c.row is not None:
        if c.row > len(rows):
            raise RegodeError(f"--row {c.row}: the manifest has {len(rows)} rows")
        line = run_row(rows[c.row - 1], str(out), c.qc, c.threads)
        if line["status"] != "done":
            raise RegodeError(f"row {c.row} ({line['id']}): {line['error']}")
        folder = rows[c.row - 1].record(out).parent
        print(f"row {c.row} ({line['id']}) done in {line['seconds']:.1f} s; outputs in {folder}")
        return
    if c.report_only:
        lines = [summary_line(r, out) for r in rows]
    else:
        cores = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )  # this job's share
        slurm = (
            {
                "queue": c.queue,
                "account": c.account,
                "walltime": c.walltime,
                "memory": c.memory,
                "jobs": c.jobs,
                "log_directory": str(out.resolve() / "slurm"),
            }
            if c.slurm
            else None
        )
        engine = Engine(
            workers=c.workers or max(1, cores // c.threads),
            threads=c.threads,
            scheduler=c.scheduler,
            slurm=slurm,
            retries=c.retries,
        )
        lines = run_cohort(rows, out, engine, c.qc, progress=not quiet, only_failed=c.only_failed)
    paths = report.write(lines, out)
    counts = {s: sum(line["status"] == s for line in lines) for s in ("done", "failed", "not run")}
    print(
        f"cohort: {counts['done']} done, {counts['failed']} failed, {counts['not run']} not run of "
        f"{len(rows)}; report {paths['html']}"
    )
    if counts["failed"]:
        raise typer.Exit(1)


cohort = app.command("cohort")(user_errors(command("cohort", SPEC, run, [MANIFEST, OUT, QUIET], run.__doc__)))
