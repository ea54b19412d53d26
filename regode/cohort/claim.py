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
whose stale claim it took over, how it ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

HEARTBEAT = 10.0
"""seconds between touches of a held claim."""
STALE = 120.0
"""seconds without a touch after which another host's claim is taken over."""


def holder() -> dict:
    """This process, as a claim names it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


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
        self.held, self._stop = False, threading.Event()

    def __enter__(self) -> bool:
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
                if self._take_over(claim):
                    log(self.log, f"took over the claim of {claim.get('host')}:{claim.get('pid')}, which is gone")
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
            json.dump({**holder(), "since": time.time()}, out)
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
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.held:
            self.path.unlink(missing_ok=True)
