"""``regode cohort`` on a single-node SLURM (slurmctld, slurmd and munge started here, as root):
a cohort as SLURM jobs, the job-array recipe of the docs, a job cancelled mid-row and a row past
its job's time limit.

SLURM needs root and Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them); without them
these tests skip, except under ``CI=true``, where a skip would hide that they never ran.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from regode.cli.app import run

from .cluster import REGODE, _arrays, _assert_clean, _claim_pid, _free_port, _log, _manifest, _summary, _wait_for

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


def test_a_row_past_its_slurm_time_limit_fails_saying_so(tmp_path, slurm):
    """A job array of two ``--row`` tasks with a one-minute limit: the endless row's task is ended
    at its limit, and the report says so for that row; the other row is done."""
    manifest = _manifest(tmp_path, 2, slow=(0,))
    manifest.write_text(manifest.read_text().replace("--iterations 400", "--iterations 10000000"))
    out = tmp_path / "out"
    row = " ".join([*REGODE[:2], f"'{REGODE[2]}'", "cohort", str(manifest), "--out", str(out), "--threads", "1"])
    submitted = subprocess.run(["sbatch", "--wait", "--array=1-2", "--time=1", f"--output={tmp_path}/%a.out",
                                "--wrap", f"{row} --row $SLURM_ARRAY_TASK_ID"],
                               capture_output=True, text=True, timeout=400)  # fmt: skip
    assert submitted.returncode != 0, submitted.stdout + submitted.stderr  # one task ran out of time
    report = subprocess.run([*REGODE, "cohort", str(manifest), "--out", str(out), "--report-only"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 1 and "1 done, 1 failed" in report.stdout, report.stdout + report.stderr
    summary = _summary(out)
    assert summary["sub-1"]["status"] == "done", summary["sub-1"]
    error = summary["sub-0"]["error"]
    assert summary["sub-0"]["status"] == "failed" and "stopped at the time limit of its SLURM job" in error, error
