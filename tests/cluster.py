"""What the cluster tests share: small phantom manifests, their outputs read back, a Dask
scheduler and workers in processes of their own, and waiting on files and ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from regode.grid import Grid
from regode.io import write_image
from regode.synthetic import phantom_labels, render

GRID = Grid((16, 18, 14), (2.0, 2.0, 2.0), (-16.0, -18.0, -14.0))
SLOW = "--iterations 400 --coarse-iterations 50 --seed 1"
"""a fit-field row of a few seconds: long enough to be killed in the middle."""
REGODE = [sys.executable, "-c", "from regode.cli import main; main()"]


def _manifest(folder: Path, rows: int, slow: tuple[int, ...] = ()) -> Path:
    lines = ["id,fixed,moving,command,options"]
    for i in range(rows):
        labels = phantom_labels(GRID, 6, i)
        write_image(render(labels, GRID, 1), GRID, folder / f"f{i}.nii.gz")
        write_image(render(labels, GRID, 2), GRID, folder / f"m{i}.nii.gz")
        options = ("fit-field", SLOW) if i in slow else ("register", "--model rigid --seed 3")
        lines.append(f"sub-{i},f{i}.nii.gz,m{i}.nii.gz,{options[0]},{options[1]}")
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(out: Path) -> dict:
    return {row["id"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}


def _log(out: Path, row: str) -> str:
    return (out / row / f"{row}_log.txt").read_text()


def _assert_clean(out: Path, rows: int) -> None:
    """Every row done, each run to its end exactly once, nothing staged or claimed left."""
    summary = _summary(out)
    assert [summary[f"sub-{i}"]["status"] for i in range(rows)] == ["done"] * rows, summary
    for i in range(rows):
        assert _log(out, f"sub-{i}").count(" done in ") == 1, _log(out, f"sub-{i}")
    assert not list(out.glob("**/.regode-*")) and not list(out.glob("**/.*.claim")), list(out.glob("**/.*"))


def _arrays(out: Path, row: str) -> dict:
    """The row's transforms and warped image, as arrays (equal runs give equal arrays)."""
    prefix = out / row / f"{row}_"
    files = [p for p in (Path(f"{prefix}1Warp.nii.gz"), Path(f"{prefix}Warped.nii.gz")) if p.is_file()]
    found = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in files}
    found["affine"] = np.asarray(sitk.ReadTransform(f"{prefix}0GenericAffine.mat").GetParameters())
    return found


def _wait_for(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _claim_pid(out: Path, row: str) -> int | None:
    claim = out / row / f".{row}_log.txt.claim"
    try:
        return int(json.loads(claim.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_processes(
    workers: int = 2,
    worker_options: tuple[str, ...] = (),
    scheduler_env: dict | None = None,
    worker_env: dict | None = None,
):
    """``dask scheduler`` and ``workers`` ``dask worker`` processes (each under its nanny) on 127.0.0.1,
    with Dask settings for each in ``scheduler_env`` and ``worker_env`` (``DASK_DISTRIBUTED__...``)."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0"],
            env={**env, **(scheduler_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]  # fmt: skip
    try:
        _wait_for(lambda: _connects(port), 60, "the scheduler")
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                     "--host", "127.0.0.1", "--dashboard-address", ":0", *worker_options],
                    env={**env, **(worker_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield SimpleNamespace(address=address, processes=procs)
    finally:
        for proc in reversed(procs):
            with_pgid_kill(proc)


def with_pgid_kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _connects(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _root_or_skip(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} needs root under CI=true")
        pytest.skip(f"{what} needs root")
