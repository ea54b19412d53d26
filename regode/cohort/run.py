"""Running a cohort: each row in-process on a Dask worker (models loaded once per worker), or one
row without Dask (``--row``, for job arrays, Snakemake or Nextflow).

A row is complete when its JSON record exists: outputs are written into a private folder and moved
into place with the record last (regode.io.atomic), so a rerun skips complete rows and runs the
rest, and a worker killed mid-row leaves nothing that counts (its staging folder is removed by the
next run: by the row's own run, or, where the record was already in place, when the row is
skipped). A failed row records its one error line in ``OUT/ID/ID_error.json`` and does not stop
the others.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import RegodeError
from ..io.atomic import atomic_output, remove_stale
from ..progress import bar
from .claim import Claim, ended, left_behind, log
from .manifest import Row


@dataclass(frozen=True)
class Engine:
    """Where rows run: a local Dask cluster (the default), an existing scheduler or SLURM."""

    workers: int = 1
    """worker processes (local cluster, or per SLURM job)."""
    threads: int = 2
    """CPU threads per worker (torch's, and Dask's per worker: one row at a time per worker)."""
    scheduler: str | None = None
    """the address of a running Dask scheduler (``tcp://host:8786``) to submit to instead."""
    slurm: dict | None = None
    """SLURMCluster options (queue, account, walltime, memory, log_directory: the jobs' own logs) and ``jobs``."""
    retries: int = 0
    """times a failed task is run again (a worker lost, say); a row refused with an error is not retried."""


def error_path(row: Row, out: Path) -> Path:
    return row.outputs(out)["error"]


def complete(row: Row, out: Path) -> bool:
    return row.record(out).is_file()


@functools.lru_cache(maxsize=4)
def _models(model: str, checkpoints: tuple):
    """The MS-ODENet models of a ``--model`` and its ``--checkpoint`` files, once per worker process."""
    from ..odenet.config import RegisterConfig
    from ..odenet.register import load_models

    return load_models(RegisterConfig(model=model, checkpoints=checkpoints))


def run_row(row: Row, out: str, qc: bool = True, threads: int | None = None) -> dict:
    """Register one row in this process and return its summary line: id, status (done or
    failed), error, seconds, worker and QC figures. User errors are recorded, not raised. The row
    is claimed first (regode.cohort.claim): while another live process runs it, this one waits and
    then returns what that run left; a row complete by then is not run again."""
    out = Path(out).resolve()
    log_path = row.log(out)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        claim = Claim(row.claim(out), log_path)
        with claim as held:
            if not held or complete(row, out):
                return summary_line(row, out)
            log(log_path, f"started row {row.number} ({row.command})")
            try:
                line = _run_row(row, out, qc, threads)
            except (SystemExit, KeyboardInterrupt):  # SIGTERM (a SLURM time limit, scancel) or Ctrl-C mid-row
                stopped = {"id": row.id, "row": row.number, "status": "failed", "error": ended(claim.context)}
                log(log_path, f"failed: {stopped['error']}")
                _record_failure(row, out, stopped)
                raise
            error = f": {line['error']}" if line["error"] else ""
            log(log_path, f"{line['status']} in {line['seconds']:.1f} s{error}")
    except OSError as exc:  # the row's folder itself cannot be made or claimed (a full or read-only disk)
        where = f" ({exc.filename})" if exc.filename else ""
        return {"id": row.id, "row": row.number, "status": "failed", "error": f"{exc.strerror or exc}{where}"}
    finally:
        release_memory()
    return line


def release_memory() -> None:
    """Hand the memory a row freed back to the system (glibc keeps freed blocks for reuse: a worker's
    resident memory otherwise grew by 15-20 % over 200 rows, against 1-3 % with this)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _run_row(row: Row, out: Path, qc: bool, threads: int | None) -> dict:
    import torch

    from ..pipeline import fit_files, register_files

    start = time.perf_counter()
    config = replace(row.config, threads=threads) if threads else row.config
    if threads:
        torch.set_num_threads(threads)
    line = {"id": row.id, "row": row.number, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        paths = row.outputs(out, qc)
        paths["json"].parent.mkdir(parents=True, exist_ok=True)
        paths.pop("error").unlink(missing_ok=True)
        record = {"sources": row.sources, "preset": row.preset}
        if row.command == "brain-extract":
            from ..heads import extract_files

            document = extract_files(row.moving, None, config, qc=qc, paths=paths, record=record)
        elif row.command == "register":
            document = register_files(
                row.fixed,
                row.moving,
                None,
                config,
                row.moving_labels,
                qc=qc,
                models=_models(config.model, config.checkpoints),
                paths=paths,
                record=record,
            )
        else:
            document = fit_files(
                row.fixed, row.moving, None, config, row.moving_labels, qc=qc, paths=paths, record=record
            )
        line.update(
            status="done",
            error=None,
            seconds=time.perf_counter() - start,
            qc_picture=_picture(row, out),
            **document.get("qc", {}),
        )
    except Exception as exc:  # any failure of this row is its record, not the cohort's end (and not retried)
        message = (
            str(exc)
            if isinstance(exc, RegodeError)
            else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        )
        line.update(status="failed", error=message, seconds=time.perf_counter() - start)
        _record_failure(row, out, line)
    return line


def _record_failure(row: Row, out: Path, line: dict) -> None:
    """The record of a row's failure, for --report-only and reruns (best effort: the summary has it)."""
    try:
        with atomic_output(error_path(row, out)) as tmp:
            Path(tmp).write_text(json.dumps(line, indent=2))
    except (OSError, RegodeError):
        pass


def _picture(row: Row, out: Path) -> str | None:
    """The row's QC picture, relative to ``out`` (the report links it), if it has one."""
    picture = row.outputs(out).get("qc")
    return str(picture.relative_to(out)) if picture is not None and picture.is_file() else None


def summary_line(row: Row, out: Path) -> dict:
    """A row's line from what its folder holds (complete, failed or not run)."""
    out = Path(out).resolve()
    if complete(row, out):
        document = json.loads(row.record(out).read_text())
        return {
            "id": row.id,
            "row": row.number,
            "status": "done",
            "error": None,
            "seconds": document.get("timings_s", {}).get("wall"),
            "worker": None,
            "qc_picture": _picture(row, out),
            **document.get("qc", {}),
        }
    if error_path(row, out).is_file():
        return json.loads(error_path(row, out).read_text())
    why = left_behind(row.claim(out), row.log(out))  # its process stopped mid-row: a time limit, memory
    return {"id": row.id, "row": row.number, "status": "failed" if why else "not run", "error": why}


def run_cohort(
    rows: list[Row], out, engine: Engine = Engine(), qc: bool = True, progress: bool = True, only_failed: bool = False
) -> list[dict]:
    """Run every row that is not complete on Dask (``only_failed``: only those whose last run
    recorded an error); returns the summary lines of all rows."""
    out = Path(out).resolve()  # workers may run in another folder (a scheduler's)
    _sweep_complete(rows, out)
    lines = {row.id: summary_line(row, out) for row in rows}
    chosen = [row for row in rows if not only_failed or lines[row.id]["status"] == "failed"]
    pending = [row for row in chosen if not complete(row, out)]
    if pending:
        with _client(engine) as client, bar(progress, eta=True) as progress_bar:
            from distributed import as_completed

            task = progress_bar.add_task(f"cohort: {len(pending)} of {len(rows)} rows", total=len(pending), info="")
            futures = {
                client.submit(
                    run_row,
                    row,
                    str(out),
                    qc,
                    engine.threads,
                    key=f"regode-{row.id}-{time.time_ns()}",
                    retries=engine.retries,
                    pure=False,
                ): row
                for row in pending
            }
            failed = 0
            for future in as_completed(futures):
                row = futures[future]
                try:
                    line = future.result()
                except Exception as exc:  # the task itself died (a worker killed, twice): the row is not complete
                    why = left_behind(row.claim(out), row.log(out)) or "its worker died"
                    error = f"{why} ({type(exc).__name__})"
                    line = {"id": row.id, "row": row.number, "status": "failed", "error": error}
                lines[row.id] = line
                failed += line["status"] != "done"
                progress_bar.update(task, advance=1, info=f"{failed} failed" if failed else "")
        _sweep_complete(rows, out)  # again: a killed run's workers may not have been gone at the start
    return [lines[row.id] for row in rows]


def _sweep_complete(rows: list[Row], out: Path) -> None:
    """Remove the staging folders that killed processes left beside complete rows (killed after the
    record was in place, before the empty folder went); incomplete rows' folders go when they run."""
    for row in rows:
        if complete(row, out):
            remove_stale(row.record(out).parent)


class _client:
    """A Dask client for the engine, and the local or SLURM cluster it started (closed after)."""

    def __init__(self, engine: Engine):
        self.engine, self.cluster, self.client = engine, None, None

    def __enter__(self):
        import dask
        from distributed import Client, LocalCluster

        engine = self.engine
        # Dask's nannies start workers with one OpenMP thread and glibc trimming freed memory at
        # 64 kB: both slow torch down (the registration took 25 % longer); each worker gets its threads
        threads = str(engine.threads)
        dask.config.set(
            {
                "logging.distributed": "error",
                "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
            }
        )
        if engine.scheduler:
            self.client = Client(engine.scheduler)
        elif engine.slurm is not None:
            self.cluster = slurm_cluster(engine)
            self.cluster.scale(jobs=int(engine.slurm.get("jobs", 1)))
            self.client = Client(self.cluster)
        else:
            self.cluster = LocalCluster(
                n_workers=engine.workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
            )
            self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def slurm_cluster(engine: Engine):
    """A ``dask_jobqueue.SLURMCluster`` for the engine (``pip install 'regode[hpc]'``): each job one
    node share of ``workers`` processes x ``threads`` threads."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RegodeError("--slurm needs dask-jobqueue: pip install 'regode[hpc]'") from None
    options = engine.slurm or {}
    return SLURMCluster(
        queue=options.get("queue"),
        account=options.get("account"),
        walltime=options.get("walltime", "01:00:00"),
        memory=options.get("memory", "8GB"),
        cores=engine.workers * engine.threads,
        processes=engine.workers,
        job_name="regode-cohort",
        log_directory=options.get("log_directory"),
    )


def cohort_threads() -> int:
    """CPU threads of the host (the local cluster's default budget)."""
    return os.cpu_count() or 1
