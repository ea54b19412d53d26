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
