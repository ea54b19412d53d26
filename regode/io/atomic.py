"""Writing output files so that a failure never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import RegodeError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with one clear line, when ``path``'s folder is missing or read-only."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise RegodeError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RegodeError(f"cannot write {path}: folder {parent} is not writable")
    if path.is_dir():
        raise RegodeError(f"cannot write {path}: it is a folder")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path with the same file name in a private folder beside ``path``; when
    the block succeeds, move every file written there into place (a MetaImage ``.mhd`` brings its
    ``.raw``), otherwise remove them all."""
    path = check_writable(path)
    tmpdir = tempfile.mkdtemp(prefix=".regode-", dir=path.parent)
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
    and only then moves every file written into place (a MetaImage ``.mhd`` brings its ``.raw``); leaving the ``with`` block
    without a commit (an exception) removes the private folder and everything in it."""

    def __init__(self, folder: str | os.PathLike):
        from concurrent.futures import ThreadPoolExecutor

        self.folder = Path(folder)
        self.tmpdir = tempfile.mkdtemp(prefix=".regode-", dir=self.folder)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regode-writer")
        self.pending: list = []

    def write(self, path: str | os.PathLike, function, *args) -> None:
        path = check_writable(path)
        if path.parent.resolve() != self.folder.resolve():
            raise ValueError(f"{path} is not in {self.folder}")
        self.pending.append(self.pool.submit(function, os.path.join(self.tmpdir, path.name), *args))

    def wait(self) -> None:
        for future in self.pending:
            future.result()

    def commit(self) -> None:
        self.wait()
        for name in os.listdir(self.tmpdir):
            os.replace(os.path.join(self.tmpdir, name), self.folder / name)

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
