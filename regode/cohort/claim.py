"""One process at a time per row: a claim file beside the row's outputs, and the row's log.

Two cohorts started on the same ``--out``, a job array's tasks beside a Dask run, or a row that
Dask runs again while its first worker is still alive must not write one row twice. Before a row
runs, its process creates ``.ID_log.txt.claim`` in the row's folder with ``O_CREAT | O_EXCL`` (atomic on
local file systems and on NFS v3 and later, unlike ``flock``), holding its host, process id and
the time; a thread touches it every :data:`HEARTBEAT` seconds while the row runs, and the file goes
when the row ends. A claim is stale when its process is gone: on this host, when no process has
its id; from another host, when it has not been touched for :data:`STALE` seconds (a node that
died). A stale claim is taken over; a live one is waited for, and the row's outcome then read
from its folder.

Each attempt at a row appends lines to ``ID_log.txt`` in its folder: when and where it started,
whose stale claim it took over, how it ended, and its resident memory whenever it rises past
:data:`WATCH` of the process's memory limit (a Dask worker's, its cgroup's or its SLURM job's).
A claim also names the SLURM job and the end of its time limit, so that a row whose process is
gone can say why (:func:`cause`): stopped at its job's time limit, killed for memory, or stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

HEARTBEAT = 10.0
"""seconds between touches of a held claim."""
STALE = 120.0
"""seconds without a touch after which another host's claim is taken over."""
SAMPLE = 0.1
"""seconds between readings of a running row's resident memory."""
WATCH = 0.6
"""the share of the memory limit above which readings go to the row's log (each 5 points more)."""
KILLED = 0.8
"""the share of the memory limit at the last reading above which a process gone is taken as killed for memory."""


def holder() -> dict:
    """This process, as a claim names it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _context() -> dict:
    """What a claim records besides its holder: the SLURM job and the end of its time limit, and the
    memory limit of this process (None where unknown)."""
    job = os.environ.get("SLURM_JOB_ID")
    return {"slurm_job": job, "ends": _slurm_end(job) if job else None, "memory_limit": memory_limit()}


def _slurm_end(job: str) -> float | None:
    """When SLURM job ``job`` reaches its time limit (seconds since the epoch), from ``scontrol``."""
    try:
        text = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bEndTime=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", text)
    return time.mktime(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")) if found else None


def memory_limit() -> int | None:
    """Bytes this process may hold before it is killed: the least of its Dask worker's memory limit,
    its cgroup's ``memory.max`` and its SLURM job's ``--mem``; None when none is set."""
    limits = []
    with contextlib.suppress(Exception):  # not in a Dask worker, or no distributed
        from distributed import get_worker

        limits.append(int(get_worker().memory_manager.memory_limit or 0))
    with contextlib.suppress(OSError, ValueError, IndexError):
        group = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2]
        limits.append(int(Path(f"/sys/fs/cgroup{group}/memory.max").read_text()))  # "max": no limit
    with contextlib.suppress(ValueError):
        limits.append(int(os.environ.get("SLURM_MEM_PER_NODE", "")) * 2**20)
    limits = [limit for limit in limits if limit > 0]
    return min(limits) if limits else None


def resident() -> int | None:
    """This process's resident memory in bytes (None where ``/proc`` is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cause(claim: dict, touched: float, log_path: Path) -> str:
    """Why the process of a claim left behind stopped before its row ended, as a row's error: its
    SLURM job's time limit (touched until the limit), memory (its last reading in the row's log above
    :data:`KILLED` of its limit) or unknown."""
    who = f"{claim.get('host')}:{claim.get('pid')}"
    if _at_limit(claim, touched):
        return _time_limit(claim)
    reading = _last_reading(log_path, who)
    if reading is not None and reading[0] >= KILLED:
        return f"killed for memory: {reading[1]} when last read: give it more memory (--memory, --mem)"
    return f"its process {who} stopped before the row ended (killed, or its node lost)"


def ended(context: dict) -> str:
    """Why this process is being stopped mid-row (SIGTERM or Ctrl-C), as a row's error: its SLURM
    job's time limit when that has come, else interrupted."""
    return _time_limit(context) if _at_limit(context, time.time()) else "interrupted (SIGTERM or Ctrl-C)"


def _at_limit(claim: dict, when: float) -> bool:
    """Whether ``when`` is at the time limit of the claim's SLURM job (within a heartbeat)."""
    ends = claim.get("ends")
    return bool(ends) and when >= ends - HEARTBEAT - 5


def _time_limit(claim: dict) -> str:
    ends = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(claim["ends"]))
    job = claim.get("slurm_job")
    return f"stopped at the time limit of its SLURM job {job} ({ends}): give it more time (--walltime, --time)"


def left_behind(path: Path, log_path: Path) -> str | None:
    """Why the process that held a row's claim ``path`` stopped before the row ended (:func:`cause`);
    None when the row has no claim or its process may still be running it."""
    found = _read(Path(path))
    if found is None or _alive(*found):
        return None
    return cause(*found, log_path)


def _last_reading(log_path: Path, who: str) -> tuple[float, str] | None:
    """The last memory reading (share of the limit, text) of ``who``'s last attempt in a row's log."""
    try:
        lines = Path(log_path).read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        if f" {who} started row" in line:
            found = None
        elif f" {who} memory: " in line and (share := re.search(r"(\d+) % of", line)):
            found = int(share.group(1)) / 100, line.split(" memory: ", 1)[1]
    return found


def log(path: Path, message: str) -> None:
    """Append one timestamped line (with this host and process) to a row's log; best effort."""
    me = holder()
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {me['host']}:{me['pid']} {message}\n"
    with contextlib.suppress(OSError), open(path, "a") as handle:
        handle.write(line)


def _alive(claim: dict, touched: float) -> bool:
    """Whether a claim's process may still run: on this host, while its process id exists; else
    (another host, or a claim whose content could not be written or read) while it is touched."""
    if claim.get("host") == socket.gethostname():
        try:
            os.kill(int(claim["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True
    return time.time() - touched < STALE


def _read(path: Path) -> tuple[dict, float] | None:
    """A claim's content and when it was last touched; None when it is gone (an empty or partial
    claim, being written or on a full disk, reads as one of unknown holder: live while touched)."""
    try:
        touched = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text), touched
    except ValueError:
        return {"host": None, "text": text}, touched


class Claim:
    """``with Claim(path, log_path) as held:`` — ``held`` is True when this process holds the row's
    claim file ``path`` (and runs the row), False when another live process held it and has now let
    go (the row's outcome is in its folder). Waits while another live process holds it."""

    def __init__(self, path: Path, log_path: Path, poll: float = 1.0):
        self.path, self.log, self.poll = Path(path), log_path, poll
        self.held, self._stop, self.context = False, threading.Event(), {}

    def __enter__(self) -> bool:
        self.context = _context()  # here, in the row's thread (a Dask worker's limit is known only there)
        waited = False
        while True:
            if self._create():
                self.held = True
                threading.Thread(target=self._beat, daemon=True, name="regode-claim").start()
                return True
            found = _read(self.path)
            if found is None:
                if waited:
                    return False  # the other run has finished with the row
                continue
            claim, touched = found
            if not _alive(claim, touched):
                why = cause(claim, touched, self.log)
                if self._take_over(claim):
                    log(
                        self.log, f"took over the claim of {claim.get('host')}:{claim.get('pid')}, which is gone: {why}"
                    )
                continue
            if not waited:
                log(self.log, f"waiting: {claim.get('host')}:{claim.get('pid')} is running this row")
            waited = True
            time.sleep(self.poll)

    def _create(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with contextlib.suppress(OSError), os.fdopen(handle, "w") as out:  # a full disk: held, unnamed
            json.dump({**holder(), "since": time.time(), **self.context}, out)
        return True

    def _take_over(self, stale: dict) -> bool:
        """Move a stale claim aside (one rename: of two processes taking it over, one wins) and check
        that what was moved is the stale claim, not a new one made in between (put back if so)."""
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.{time.time_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        found = _read(aside)
        if found is not None and found[0] != stale:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)  # a live claim taken by mistake goes back (unless replaced again)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        """Touch the claim every HEARTBEAT seconds; log memory readings above WATCH of the limit."""
        limit, logged, touched = self.context.get("memory_limit"), 0.0, time.monotonic()
        while not self._stop.wait(SAMPLE):
            used = resident() if limit else None
            if used is not None and used / limit >= max(WATCH, logged + 0.05):
                logged = used / limit
                mib = f"{used / 2**20:.0f} MiB resident, {logged * 100:.0f} % of its {limit / 2**20:.0f} MiB limit"
                log(self.log, f"memory: {mib}")
            if time.monotonic() - touched >= HEARTBEAT:
                touched = time.monotonic()
                with contextlib.suppress(OSError):
                    os.utime(self.path)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.held:
            self.path.unlink(missing_ok=True)
