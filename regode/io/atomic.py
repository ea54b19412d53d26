"""Writing output files so that a failure never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import RegodeError

STAGING = ".regode-"
"""private staging folders are ``.regode-<host>-<pid>-XXXX`` beside the outputs: the machine and
process that made one are named, so a later run on that machine can remove what a killed run left
(:func:`staging_folder`), and leaves alone what runs on other nodes of a shared file system write."""


def _mine() -> str:
    """This process's staging prefix: ``.regode-<host>-<pid>-``."""
    return f"{STAGING}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with one clear line, when ``path`` cannot be written: its folder is missing,
    read-only or refuses new files (``/proc``, ``/sys``, a read-only mount), its name is too long
    for the file system, or it is a folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise RegodeError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RegodeError(f"cannot write {path}: folder {parent} is not writable")
    try:
        longest = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    if len(os.fsencode(path.name)) > longest:
        raise RegodeError(f"cannot write {path}: the file name is longer than the file system allows ({longest} bytes)")
    if path.is_dir():
        raise RegodeError(f"cannot write {path}: it is a folder")
    try:  # the folder may look writable and still refuse files (/proc, /sys, a full or read-only disk)
        handle, probe = tempfile.mkstemp(prefix=_mine(), dir=parent)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise RegodeError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def input_path(spec: str | os.PathLike) -> Path:
    """The file of an input spec (a transform's ``[file,1]`` names ``file``)."""
    text = str(spec).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].rsplit(",", 1)[0].strip()
    return Path(text)


def check_outputs(outputs, inputs=()) -> list[Path]:
    """Every output writable (:func:`check_writable`), none the same file as an input (resolved
    paths, and ``os.path.samefile`` where both exist: links included) or as another output. Call it
    before any work: a user's file is never overwritten by regode."""
    outputs = [check_writable(p) for p in outputs]
    sources = [input_path(p) for p in inputs if p is not None and str(p)]
    seen: dict[Path, Path] = {}
    for out in outputs:
        resolved = out.resolve()
        if resolved in seen:
            raise RegodeError(f"two outputs are the same file: {out}")
        seen[resolved] = out
        for source in sources:
            same = resolved == source.resolve()
            if not same and out.exists() and source.exists():
                same = os.path.samefile(out, source)
            if same:
                raise RegodeError(
                    f"output {out} is the input {source}: choose another output name (regode never "
                    f"overwrites its inputs)"
                )
    return outputs


def remove_stale(folder: str | os.PathLike) -> None:
    """Remove the staging folders that a killed regode process on this host left in ``folder``
    (a process killed while it wrote there, or after its last file was in place and before its
    empty folder went)."""
    folder = Path(folder)
    here = f"{STAGING}{socket.gethostname().replace('-', '_')}-"
    for stale in folder.glob(f"{here}*"):
        pid = stale.name[len(here) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def staging_folder(folder: str | os.PathLike) -> str:
    """A new private folder in ``folder`` for files being written, after :func:`remove_stale`."""
    remove_stale(folder)
    return tempfile.mkdtemp(prefix=_mine(), dir=folder)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` on this host may still write. A killed process stays in the
    process table as a zombie until its parent reaps it (a cohort's killed workers, whose nanny died
    with them, wait for init), and a zombie writes nothing: it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # Linux: the state follows the parenthesised command name in /proc/PID/stat
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS), or the process just went
        return True
    return state not in (b"Z", b"X")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path with the same file name in a private folder beside ``path``; when
    the block succeeds, move every file written there into place (a MetaImage ``.mhd`` brings its
    ``.raw``), otherwise remove them all."""
    path = check_writable(path)
    tmpdir = staging_folder(path.parent)
    try:
        yield os.path.join(tmpdir, path.name)
        for name in os.listdir(tmpdir):
            os.replace(os.path.join(tmpdir, name), path.parent / name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


class StagedOutputs:
    """Several output files that appear together or not at all, written in the background.

    ``write(path, function, *args)`` runs ``function(staged_path, *args)`` on a writer thread
    (file writing releases the GIL, so it overlaps with the caller's next computation), where
    ``staged_path`` lies in a private folder inside ``folder``, where every ``path`` must lie.
    ``wait()`` waits for the writes so far and re-raises the first failure; ``commit()`` waits,
    and only then moves every file written into place (a MetaImage ``.mhd`` brings its ``.raw``); leaving the
    ``with`` block
    without a commit (an exception) removes the private folder and everything in it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.tmpdir = staging_folder(self.folder)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regode-writer")
        self.pending: list = []
        self.names: list[str] = []

    def write(self, path: str | os.PathLike, function, *args) -> None:
        path = check_writable(path)
        if path.parent.resolve() != self.folder.resolve():
            raise ValueError(f"{path} is not in {self.folder}")
        self.pending.append(self.pool.submit(function, os.path.join(self.tmpdir, path.name), *args))
        self.names.append(path.name)

    def wait(self) -> None:
        for future in self.pending:
            future.result()

    def commit(self) -> None:
        """Move the files into place in the order they were written (a file written last, such
        as a run's JSON record, appears last); a MetaImage's ``.raw`` comes before its header."""
        self.wait()
        names = os.listdir(self.tmpdir)
        order = {name: i for i, name in enumerate(self.names)}
        # Ctrl-C and SIGTERM wait until every file is in place: the outputs appear together
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for name in sorted(names, key=lambda n: order.get(n, order.get(n.rsplit(".", 1)[0] + ".mhd", 0) - 0.5)):
                os.replace(os.path.join(self.tmpdir, name), self.folder / name)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
