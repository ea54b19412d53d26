"""``regode cohort``: every registration of a manifest, on Dask, resumable, with QC and a report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, choices, user_errors

Command = choices("Command", ("register", "fit-field"))


@app.command()
@user_errors
def cohort(
    manifest: Annotated[Path, typer.Argument(help="CSV with columns id, fixed, moving[, moving_labels, command, options].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: OUT/ID/ID_* per row, OUT/summary.csv, OUT/report.html.")],
    command: Annotated[Command, typer.Option("--command", help="The command of rows that name none.")] = Command("register"),
    options: Annotated[str, typer.Option("--options", help="Options of rows that give none, e.g. \"--model rigid+bspline\".")] = "",
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Worker processes (default: cores / threads).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads per worker.")] = 2,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Submit to a running Dask scheduler (tcp://host:8786).")] = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Start Dask workers as SLURM jobs (dask-jobqueue: pip install 'regode[hpc]').")] = False,
    queue: Annotated[Optional[str], typer.Option("--queue", help="--slurm: partition.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="--slurm: account.")] = None,
    walltime: Annotated[str, typer.Option("--walltime", help="--slurm: time limit per job.")] = "01:00:00",
    memory: Annotated[str, typer.Option("--memory", help="--slurm: memory per job.")] = "8GB",
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="--slurm: jobs to start.")] = 1,
    row: Annotated[Optional[int], typer.Option("--row", min=1, help="Run this row only, here, without Dask (job arrays: --row $SLURM_ARRAY_TASK_ID).")] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Times a task whose worker died is run again.")] = 1,
    bids: Annotated[bool, typer.Option("--bids", help="BIDS-style derivatives: OUT/sub-X/anat/sub-X_from-FLAIR_to-T1w_mode-image_xfm.h5 ... (manifest columns from, to) and OUT/dataset_description.json.")] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Write the summary and report from the outputs there (after job arrays).")] = False,
    qc: Annotated[bool, typer.Option("--qc/--no-qc", help="QC picture and figures per row.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Register every row of MANIFEST (a CSV), in-process on Dask workers; resumable; QC and report."""
    from ..cohort import report
    from ..cohort.manifest import read_manifest
    from ..cohort.run import Engine, run_cohort, run_row, summary_line
    from ..errors import RegodeError

    if out.exists() and not out.is_dir():
        raise RegodeError(f"--out {out} is a file, not a folder")
    rows = read_manifest(manifest, out, command.value, options, qc, bids)
    out.mkdir(parents=True, exist_ok=True)
    if bids:
        from ..cohort.report import dataset_description

        dataset_description(out)
    if row is not None:
        if row > len(rows):
            raise RegodeError(f"--row {row}: the manifest has {len(rows)} rows")
        line = run_row(rows[row - 1], str(out), qc, threads)
        if line["status"] != "done":
            raise RegodeError(f"row {row} ({line['id']}): {line['error']}")
        print(f"row {row} ({line['id']}) done in {line['seconds']:.1f} s; outputs in {rows[row - 1].record(out).parent}")
        return
    if report_only:
        lines = [summary_line(r, out) for r in rows]
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # this job's share
        engine = Engine(workers=workers or max(1, cores // threads), threads=threads, scheduler=scheduler,
                        slurm={"queue": queue, "account": account, "walltime": walltime, "memory": memory, "jobs": jobs} if slurm else None,
                        retries=retries)
        lines = run_cohort(rows, out, engine, qc, progress=not quiet)
    paths = report.write(lines, out)
    counts = {s: sum(line["status"] == s for line in lines) for s in ("done", "failed", "not run")}
    print(f"cohort: {counts['done']} done, {counts['failed']} failed, {counts['not run']} not run of {len(rows)}; report {paths['html']}")
    if counts["failed"]:
        raise typer.Exit(1)
