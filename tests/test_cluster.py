"""``regode cohort`` on a Dask scheduler and workers in processes of their own, and the faults of
a real cluster: a worker killed mid-row or for memory, two cohorts on one folder, a corrupt input
found only when its row runs, a full disk. Each ends with every row done once (or the row at fault
failed, saying why), nothing duplicated and no staging folder left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk

from regode.cli.app import run
from regode.grid import Grid
from regode.io import write_image
from regode.synthetic import phantom_labels, render

from .cluster import (
    REGODE,
    _arrays,
    _assert_clean,
    _claim_pid,
    _log,
    _manifest,
    _root_or_skip,
    _summary,
    _wait_for,
    dask_processes,
    with_pgid_kill,
)


@pytest.fixture
def dask_cluster():
    """A scheduler and two workers of their own."""
    with dask_processes(2) as cluster:
        yield cluster


def test_a_cohort_runs_on_a_scheduler_and_workers_of_their_own(tmp_path, dask_cluster):
    manifest = _manifest(tmp_path, 3)
    out = tmp_path / "out"
    args = ["cohort", str(manifest), "--out", str(out), "--threads", "1", "-q"]
    assert run([*args, "--scheduler", dask_cluster.address]) == 0
    _assert_clean(out, 3)
    assert len({row["worker"] for row in _summary(out).values()}) == 2  # both workers took rows
    local = tmp_path / "local"
    assert run(["cohort", str(manifest), "--out", str(local), "--workers", "1", "--threads", "1", "-q"]) == 0
    for i in range(3):
        a, b = _arrays(out, f"sub-{i}"), _arrays(local, f"sub-{i}")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_worker_killed_mid_row_leaves_the_row_to_another_run_once(tmp_path, dask_cluster):
    """SIGKILL to the worker process running a row: Dask runs the row again (the killed worker's
    claim is seen to be gone and taken over), it completes once, and equals an undisturbed run."""
    manifest = _manifest(tmp_path, 2, slow=(0,))
    out = tmp_path / "out"
    args = ["cohort", str(manifest), "--out", str(out), "--threads", "1", "-q"]
    proc = subprocess.Popen([*REGODE, *args, "--scheduler", dask_cluster.address], stdout=subprocess.PIPE, text=True)
    pid = _wait_for(lambda: _claim_pid(out, "sub-0"), 120, "the slow row to start")
    time.sleep(0.5)  # into the fit
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    _assert_clean(out, 2)
    log = _log(out, "sub-0")
    assert log.count("started row") == 2 and "took over the claim" in log and f":{pid} started" in log, log
    undisturbed = tmp_path / "undisturbed"
    assert run(["cohort", str(manifest), "--out", str(undisturbed), "--workers", "1", "--threads", "1", "-q"]) == 0
    a, b = _arrays(out, "sub-0"), _arrays(undisturbed, "sub-0")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_killed_cohort_and_cluster_then_a_rerun_completes_what_is_missing(tmp_path, dask_cluster):
    manifest = _manifest(tmp_path, 3, slow=(2,))
    out = tmp_path / "out"
    args = ["cohort", str(manifest), "--out", str(out), "--threads", "1", "-q"]
    proc = subprocess.Popen([*REGODE, *args, "--scheduler", dask_cluster.address], start_new_session=True)
    _wait_for(lambda: _claim_pid(out, "sub-2"), 120, "the slow row to start")
    with_pgid_kill(proc)  # the cohort process, mid-row,
    for process in dask_cluster.processes:  # and the scheduler and workers (their nannies and worker processes)
        with_pgid_kill(process)
    assert not (out / "sub-2" / "sub-2_regode.json").exists()
    assert run([*args, "--workers", "1"]) == 0
    _assert_clean(out, 3)


def test_two_cohorts_on_one_folder_run_each_row_once(tmp_path):
    manifest = _manifest(tmp_path, 4)
    out = tmp_path / "out"
    command = [*REGODE, "cohort", str(manifest), "--out", str(out), "--workers", "1", "--threads", "1", "-q"]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    _assert_clean(out, 4)  # one "done" per row's log between the two cohorts
    records = {p: p.stat().st_mtime_ns for p in out.glob("*/*_regode.json")}
    assert len(records) == 4


def test_a_corrupt_input_found_when_its_row_runs_fails_that_row_alone(tmp_path):
    manifest = _manifest(tmp_path, 3)
    moving = tmp_path / "m1.nii"
    image = sitk.ReadImage(str(tmp_path / "m1.nii.gz"))
    sitk.WriteImage(image, str(moving))
    data = moving.read_bytes()
    moving.write_bytes(data[: len(data) // 2])  # a valid header (the manifest check passes), half the voxels
    manifest.write_text(manifest.read_text().replace("m1.nii.gz", "m1.nii"))
    out = tmp_path / "out"
    assert run(["cohort", str(manifest), "--out", str(out), "--workers", "1", "--threads", "1", "-q"]) == 1
    summary = _summary(out)
    assert summary["sub-1"]["status"] == "failed" and "m1.nii" in summary["sub-1"]["error"], summary["sub-1"]
    assert summary["sub-0"]["status"] == summary["sub-2"]["status"] == "done"
    moving.write_bytes(data)  # repaired: only the failed row runs again
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*_regode.json")}
    assert run(["cohort", str(manifest), "--out", str(out), "--workers", "1", "--threads", "1", "-q",
                "--only-failed"]) == 0  # fmt: skip
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert _summary(out)["sub-1"]["status"] == "done" and not (out / "sub-1" / "sub-1_error.json").exists()


def test_a_full_disk_fails_its_row_alone_and_a_rerun_finishes_it(tmp_path):
    """The row's folder on a 16 kB tmpfs: its staging and final folder are there, and full."""
    _root_or_skip("mounting a tmpfs")
    manifest = _manifest(tmp_path, 3)
    out = tmp_path / "out"
    full = out / "sub-1"
    full.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], check=True)
    try:
        args = ["cohort", str(manifest), "--out", str(out), "--workers", "1", "--threads", "1", "-q"]
        assert run(args) == 1
        summary = _summary(out)
        assert summary["sub-1"]["status"] == "failed" and "space" in summary["sub-1"]["error"], summary["sub-1"]
        assert summary["sub-0"]["status"] == summary["sub-2"]["status"] == "done"
        assert not [p for p in full.iterdir() if p.name.startswith(".regode-")]  # nothing staged left on it
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert run(args) == 0
    assert {row["status"] for row in _summary(out).values()} == {"done"}
    assert not list(out.glob("**/.regode-*")) and not list(out.glob("**/.*.claim"))


def test_a_worker_killed_for_memory_fails_its_row_saying_so(tmp_path):
    """One worker of 750 MB (its nanny ends it at 95 %; never paused, which would leave the row
    waiting): a 1 mm 176^3 fit-field row (over 1 GB) kills it, twice (the scheduler's allowed
    failures: 1); that row fails "killed for memory" with its last reading, the small rows are done."""
    manifest = _manifest(tmp_path, 2)
    big = Grid((176, 176, 176), (1.0, 1.0, 1.0), (-88.0, -88.0, -88.0))
    labels = phantom_labels(big, 6, 0)
    write_image(render(labels, big, 1), big, tmp_path / "big_f.nii.gz")
    write_image(render(labels, big, 2), big, tmp_path / "big_m.nii.gz")
    with manifest.open("a") as rows:
        rows.write("sub-big,big_f.nii.gz,big_m.nii.gz,fit-field,--seed 1\n")
    out = tmp_path / "out"
    failures = {  # one task on the worker at a time: the small rows wait on the scheduler, not on it
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
        "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
    }
    memory = {f"DASK_DISTRIBUTED__WORKER__MEMORY__{k}": "false" for k in ("TARGET", "SPILL", "PAUSE")}
    with dask_processes(1, ("--memory-limit", "750MB"), failures, memory) as cluster:
        args = ["cohort", str(manifest), "--out", str(out), "--threads", "1", "-q", "--scheduler", cluster.address]
        done = subprocess.run([*REGODE, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 1, done.stdout + done.stderr
    summary = _summary(out)
    assert summary["sub-0"]["status"] == summary["sub-1"]["status"] == "done", summary
    error = summary["sub-big"]["error"]
    assert summary["sub-big"]["status"] == "failed" and error.startswith("killed for memory: "), error
    assert re.search(r"\d+ MiB resident, (8\d|9\d|1\d\d) % of its 715 MiB limit", error), error
    assert "killed for memory" in _log(out, "sub-big")  # the second attempt took over the first's claim, saying why
