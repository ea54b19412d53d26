"""``regode cohort`` on what labs run it on: a Dask scheduler and workers in processes of their own,
a single-node SLURM (slurmctld, slurmd and munge started here, as root), and the faults of a real
cluster: a worker killed mid-row, two cohorts on one folder, a corrupt input found only when its
row runs, a full disk, a SLURM job cancelled mid-row. Each ends with every row done once, nothing
duplicated and no staging folder left.

SLURM needs root and Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them); without them
its tests skip, except under ``CI=true``, where a skip would hide that they never ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from regode.cli.app import run
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


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (each under its nanny) on 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    ]  # fmt: skip
    try:
        _wait_for(lambda: _connects(port), 60, "the scheduler")
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                     "--host", "127.0.0.1", "--dashboard-address", ":0"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
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


def _root_or_skip(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} needs root under CI=true")
        pytest.skip(f"{what} needs root")


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


# --- SLURM ----------------------------------------------------------------------------------------

SLURM_CONF = """\
ClusterName=regode-test
SlurmctldHost=localhost
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm():
    """A single-node SLURM on localhost (no cgroups: proctrack/linuxproc, task/none) with its own
    munge daemon, started for these tests and stopped after; ``SLURM_CONF`` points at it."""
    missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(name) is None]
    if missing or os.geteuid() != 0:
        reason = f"a single-node SLURM needs root and Debian's slurm-wlm and munge (missing: {missing or 'root'})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="regode-slurm-"))  # pytest's folders are root's alone: munge reads this one
    os.chmod(root, 0o755)
    for name in ("state", "spool"):
        (root / name).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, ctld=_free_port(), slurmd=_free_port()))
    shutil.chown(root, "munge", "munge")
    key = root / "munge.key"
    key.write_bytes(os.urandom(128))
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o600)
    files = {"socket": "munge.socket", "pid-file": "munged.pid", "log-file": "munged.log", "seed-file": "munged.seed"}
    munge = ["runuser", "-u", "munge", "--", "munged", f"--key-file={key}"]
    munge += [f"--{option}={root / name}" for option, name in files.items()]
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        subprocess.run(munge, check=True)
        subprocess.run(["slurmctld", "-f", str(conf)], check=True)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True)
        _wait_for(lambda: "idle" in _out(["sinfo", "-h", "-o", "%T"]), 60, "the SLURM node to be idle")
        yield root
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], check=False, capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pidfile = root / f"{name}.pid"
            if pidfile.is_file():
                try:
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def _out(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


def test_a_cohort_runs_as_slurm_jobs_and_equals_a_local_run(tmp_path, slurm):
    manifest = _manifest(tmp_path, 3)
    out, local = tmp_path / "out", tmp_path / "local"
    common = ["--threads", "1", "-q"]
    args = ["cohort", str(manifest), "--out", str(out), "--slurm", "--jobs", "1", "--workers", "1", "--memory", "2GB"]
    assert run([*args, *common]) == 0
    _assert_clean(out, 3)
    assert run(["cohort", str(manifest), "--out", str(local), "--workers", "1", *common]) == 0
    for i in range(3):
        a, b = _arrays(out, f"sub-{i}"), _arrays(local, f"sub-{i}")
        assert all(np.array_equal(a[k], b[k]) for k in a)
    _wait_for(lambda: not _out(["squeue", "-h"]).strip(), 60, "the cohort's jobs to end")  # stopped after


def test_the_job_array_recipe_of_the_docs_runs_as_written(tmp_path, slurm):
    text = (Path(__file__).parents[1] / "docs" / "guide" / "cohorts.md").read_text()
    script = re.search(r"```bash\n(#!/bin/bash\n#SBATCH --job-name=regode\n.*?)```", text, re.S).group(1)
    report = re.search(r"```bash\n(regode cohort study.csv --out derivatives/regode --report-only)\n```", text).group(1)
    _manifest(tmp_path, 3).rename(tmp_path / "study.csv")
    regode = tmp_path / "bin" / "regode"  # the command as a user has it on PATH
    regode.parent.mkdir()
    regode.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from regode.cli import main; main()' \"$@\"\n")
    regode.chmod(0o755)
    script = script.replace("--array=1-120", "--array=1-3").replace("--mem=4G", "--mem=1G")
    (tmp_path / "array.sh").write_text(script)
    env = {**os.environ, "PATH": f"{regode.parent}:{os.environ['PATH']}"}
    submitted = subprocess.run(["sbatch", "--parsable", "--wait", "array.sh"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=600)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    done = subprocess.run(report.split(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_clean(tmp_path / "derivatives" / "regode", 3)


def test_a_slurm_job_cancelled_mid_row_leaves_the_row_to_the_other_job(tmp_path, slurm):
    manifest = _manifest(tmp_path, 2, slow=(0,))
    out = tmp_path / "out"
    args = ["cohort", str(manifest), "--out", str(out), "--slurm", "--jobs", "2", "--workers", "1", "--threads", "1",
            "--memory", "2GB", "-q"]  # fmt: skip
    proc = subprocess.Popen([*REGODE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid = _wait_for(lambda: _claim_pid(out, "sub-0"), 180, "the slow row to start")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    job = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"SLURM_JOB_ID="))
    subprocess.run(["scancel", job], check=True)
    assert proc.wait(timeout=400) == 0, proc.stdout.read()
    _assert_clean(out, 2)
    log = _log(out, "sub-0")
    assert log.count("started row") == 2 and "took over the claim" in log, log
