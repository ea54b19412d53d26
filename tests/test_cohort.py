"""``regode cohort``: a manifest of registrations on a real Dask LocalCluster of 2 worker
processes, checked before any work, resumable after a kill, equal to plain ``regode register``
runs, with a report that a browser opens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from regode.cli.app import run
from regode.grid import Grid
from regode.io import write_image
from regode.synthetic import phantom_labels, render

GRID = Grid((16, 18, 14), (2.0, 2.0, 2.0), (-16.0, -18.0, -14.0))
LOCAL = ["--workers", "2", "--threads", "1", "-q"]


@pytest.fixture
def cohort(tmp_path):
    """Five rows: four rigid registrations and a fit-field one, with labels."""
    rows = ["id,fixed,moving,moving_labels,command,options"]
    for i in range(5):
        labels = phantom_labels(GRID, 6, i)
        write_image(render(labels, GRID, 1), GRID, tmp_path / f"f{i}.nii.gz")
        write_image(render(labels, GRID, 2), GRID, tmp_path / f"m{i}.nii.gz")
        write_image(labels, GRID, tmp_path / f"l{i}.nii.gz", np.int16)
        command, options = (
            ("register", "--model rigid --seed 3") if i < 4 else ("fit-field", "--iterations 5 --coarse-iterations 5")
        )
        rows.append(f"sub-{i},f{i}.nii.gz,m{i}.nii.gz,l{i}.nii.gz,{command},{options}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _summary(out: Path) -> dict:
    return {row["id"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}


def test_a_manifest_runs_on_two_workers_with_qc_and_a_report(cohort, capfd):
    assert run(["cohort", str(cohort / "manifest.csv"), "--out", str(cohort / "out"), *LOCAL]) == 0
    summary = _summary(cohort / "out")
    assert {row["status"] for row in summary.values()} == {"done"} and len(summary) == 5
    workers = {row["worker"] for row in summary.values()}
    assert len(workers) == 2, workers  # both worker processes took rows
    for i in range(5):
        prefix = cohort / "out" / f"sub-{i}" / f"sub-{i}_"
        for name in ("Warped.nii.gz", "WarpedLabels.nii.gz", "0GenericAffine.mat", "qc.png", "regode.json"):
            assert Path(f"{prefix}{name}").is_file(), name
        assert summary[f"sub-{i}"]["overlap_after"] > 0.5 and 0 <= summary[f"sub-{i}"]["mi_after"]
    assert (cohort / "out" / "sub-4" / "sub-4_1Warp.nii.gz").is_file() and summary["sub-4"]["jacobian_min"] > 0
    assert (cohort / "out" / "summary.csv").read_text().count("\n") == 6
    page = (cohort / "out" / "report.html").read_text()
    assert page.count("<tr") == 6 and 'href="sub-0/sub-0_qc.png"' in page


def test_bad_rows_are_all_reported_before_any_work(cohort, capfd):
    manifest = cohort / "manifest.csv"
    manifest.write_text(
        manifest.read_text() + "sub-0,f0.nii.gz,m0.nii.gz,,,\nsub-x,nothere.nii.gz,m1.nii.gz,,,\n"
        "sub-y,f1.nii.gz,m1.nii.gz,,register,--model nosuch\nsub-z,f1.nii.gz,m1.nii.gz,,register,-o elsewhere\n"
    )
    assert run(["cohort", str(manifest), "--out", str(cohort / "out"), *LOCAL]) == 1
    err = capfd.readouterr().err
    assert "4 bad row(s), nothing was run" in err and "Traceback" not in err
    for words in (
        "row 6 (sub-0): id sub-0 is also row 1's",
        "row 7 (sub-x): file not found",
        "row 8 (sub-y): options",
        "row 9 (sub-z)",
    ):
        assert words in err, words
    assert not (cohort / "out").exists(), "nothing may be written"


def test_a_row_runs_alone_and_equals_plain_register(cohort):
    """``--row N`` (job arrays) runs one row here, without Dask; its outputs equal those of plain
    ``regode register`` with the same options (same seed, same threads)."""
    assert (
        run(
            ["cohort", str(cohort / "manifest.csv"), "--out", str(cohort / "out"), "--row", "2", "--threads", "1", "-q"]
        )
        == 0
    )
    assert (
        run(
            [
                "register",
                "-f",
                str(cohort / "f1.nii.gz"),
                "-m",
                str(cohort / "m1.nii.gz"),
                "--moving-labels",
                str(cohort / "l1.nii.gz"),
                "-o",
                str(cohort / "plain_"),
                "--model",
                "rigid",
                "--seed",
                "3",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    ours, plain = cohort / "out" / "sub-1" / "sub-1_", cohort / "plain_"
    for name in ("Warped.nii.gz", "WarpedLabels.nii.gz"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(f"{p}{name}")) for p in (ours, plain))
        np.testing.assert_array_equal(a, b)
    a, b = (sitk.ReadTransform(f"{p}0GenericAffine.mat").GetParameters() for p in (ours, plain))
    np.testing.assert_allclose(a, b, atol=1e-9)
    assert not (cohort / "out" / "sub-0").exists()  # only that row


def test_a_failed_row_is_recorded_and_the_others_finish(cohort, capfd):
    far = sitk.ReadImage(str(cohort / "m2.nii.gz"))
    far.SetOrigin((1000.0, 0.0, 0.0))
    sitk.WriteImage(far, str(cohort / "m2.nii.gz"))
    manifest = cohort / "manifest.csv"
    manifest.write_text(
        manifest.read_text().replace(
            "sub-2,f2.nii.gz,m2.nii.gz,l2.nii.gz,register,--model rigid --seed 3",
            "sub-2,f2.nii.gz,m2.nii.gz,,register,--model rigid --no-center-of-mass",
        )
    )
    assert run(["cohort", str(manifest), "--out", str(cohort / "out"), *LOCAL]) == 1
    summary = _summary(cohort / "out")
    assert summary["sub-2"]["status"] == "failed" and "do not overlap" in summary["sub-2"]["error"]
    assert sum(row["status"] == "done" for row in summary.values()) == 4
    assert json.loads((cohort / "out" / "sub-2" / "sub-2_error.json").read_text())["status"] == "failed"
    order = [row["id"] for row in json.loads((cohort / "out" / "summary.json").read_text())["rows"]]
    assert order[0] == "sub-2"  # failures first


def test_a_killed_run_started_again_runs_only_the_missing_rows(cohort):
    out = cohort / "out"
    command = [
        sys.executable,
        "-c",
        "from regode.cli import main; main()",
        "cohort",
        str(cohort / "manifest.csv"),
        "--out",
        str(out),
        *LOCAL,
    ]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("*/*_regode.json")):
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the cohort and its workers, mid-run
        proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/*_regode.json")}
    assert 1 <= len(done) < 5, "the kill should land mid-run"
    assert run(["cohort", str(cohort / "manifest.csv"), "--out", str(out), *LOCAL]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in done.items()), "complete rows must not run again"
    assert len(list(out.glob("*/*_regode.json"))) == 5 and not list(out.glob("**/.regode-*"))
    assert {row["status"] for row in _summary(out).values()} == {"done"}


def test_a_rerun_removes_the_staging_folder_a_kill_left_beside_a_complete_row(cohort):
    """A row killed after its record was moved into place but before its (empty) staging folder was
    removed is complete, so a rerun skips it; it still removes that folder, which is a dead
    process's, and keeps a live process's."""
    import socket

    from regode.cohort.manifest import read_manifest
    from regode.cohort.run import run_cohort

    out = cohort / "out"
    assert run(["cohort", str(cohort / "manifest.csv"), "--out", str(out), "--row", "1", "-q"]) == 0
    rows = read_manifest(cohort / "manifest.csv", out)[:1]
    folder = rows[0].record(out).parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace("-", "_")
    stale, live = folder / f".regode-{host}-{dead.pid}-abc", folder / f".regode-{host}-{os.getpid()}-abc"
    stale.mkdir()
    live.mkdir()
    record = rows[0].record(out).stat().st_mtime_ns
    lines = run_cohort(rows, out, progress=False)
    assert [line["status"] for line in lines] == ["done"] and rows[0].record(out).stat().st_mtime_ns == record
    assert not stale.exists() and live.exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_report_opens_in_a_browser_from_disk(cohort, tmp_path):
    assert run(["cohort", str(cohort / "manifest.csv"), "--out", str(cohort / "out"), "--row", "1", "-q"]) == 0
    assert run(["cohort", str(cohort / "manifest.csv"), "--out", str(cohort / "out"), "--report-only", "-q"]) == 0
    page = (cohort / "out" / "report.html").as_uri()
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr") == 6 and "sub-0_qc.png" in dom and "1 done, 4 not run" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,700", page], capture_output=True, timeout=120)
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))
    assert image.shape[:2] == (700, 1200) and image.std() > 5  # not a blank page


def test_the_slurm_job_script_holds_the_options():
    """``--slurm`` builds a dask_jobqueue.SLURMCluster; its job script carries the options (no SLURM needed)."""
    pytest.importorskip("dask_jobqueue")
    from regode.cohort.run import Engine, slurm_cluster

    cluster = slurm_cluster(
        Engine(
            workers=2,
            threads=4,
            slurm={"queue": "long", "account": "neurolab", "walltime": "02:30:00", "memory": "16GB", "jobs": 3},
        )
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for words in (
        "#SBATCH -p long",
        "#SBATCH -A neurolab",
        "#SBATCH -t 02:30:00",
        "#SBATCH --mem=15G",
        "--nworkers 2",
        "--nthreads 4",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=8",
    ):
        assert words in script, (words, script)


def test_bids_names_hold_the_same_mapping_as_ants_files(cohort, capfd):
    """``--bids``: NiPreps-style names in OUT/sub-X[/ses-Y]/anat/, the mapping as one ITK composite
    (.h5) that maps points as plain ``regode fit-field``'s -t 1Warp -t 0GenericAffine do, its inverse,
    and a dataset_description.json."""
    import torch

    from regode.io import load_transform, load_transform_chain

    manifest = cohort / "bids.csv"
    manifest.write_text(
        "id,fixed,moving,from,to,command,options\n"
        "sub-01_ses-a,f4.nii.gz,m4.nii.gz,FLAIR,T1w,fit-field,--iterations 5 --coarse-iterations 5\n"
    )
    out = cohort / "derivatives"
    assert run(["cohort", str(manifest), "--out", str(out), "--bids", "--row", "1", "--threads", "1", "-q"]) == 0
    anat = out / "sub-01" / "ses-a" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    assert names == [
        "sub-01_ses-a_from-FLAIR_to-T1w_desc-log.txt",  # the row's log, beside its error record's name
        "sub-01_ses-a_from-FLAIR_to-T1w_desc-qc.png",
        "sub-01_ses-a_from-FLAIR_to-T1w_desc-regode.json",
        "sub-01_ses-a_from-FLAIR_to-T1w_mode-image_xfm.h5",
        "sub-01_ses-a_from-T1w_to-FLAIR_mode-image_xfm.h5",
        "sub-01_ses-a_space-FLAIR_T1w.nii.gz",
        "sub-01_ses-a_space-T1w_FLAIR.nii.gz",
    ], names
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert (
        run(
            [
                "fit-field",
                "-f",
                str(cohort / "f4.nii.gz"),
                "-m",
                str(cohort / "m4.nii.gz"),
                "-o",
                str(cohort / "plain_"),
                "-q",
                "--iterations",
                "5",
                "--coarse-iterations",
                "5",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    points = torch.as_tensor(GRID.world_points(torch.float64)[::3, ::3, ::3].reshape(1, -1, 3))
    composite = load_transform(anat / "sub-01_ses-a_from-FLAIR_to-T1w_mode-image_xfm.h5")(points)
    chain = load_transform_chain([str(cohort / "plain_1Warp.nii.gz"), str(cohort / "plain_0GenericAffine.mat")])(points)
    torch.testing.assert_close(composite, chain, atol=1e-4, rtol=0)
    back = load_transform(anat / "sub-01_ses-a_from-T1w_to-FLAIR_mode-image_xfm.h5")
    inside = (composite - points).norm(dim=-1) < 5  # the fixed-point inverse holds inside the grid
    assert float((back(composite) - points).norm(dim=-1)[inside].median()) < 0.2
    assert run(["cohort", str(manifest), "--out", str(out), "--bids", "--report-only", "-q"]) == 0
    # one subject, several pairs: allowed; one pair twice, or from == to: refused before any work
    two = cohort / "two.csv"
    two.write_text(
        "id,fixed,moving,from,to\nsub-02,f1.nii.gz,m1.nii.gz,FLAIR,T1w\nsub-02,f1.nii.gz,m2.nii.gz,T2w,T1w\n"
        "sub-02,f1.nii.gz,m3.nii.gz,T2w,T1w\nsub-03,f1.nii.gz,m1.nii.gz,T1w,T1w\n"
    )
    capfd.readouterr()
    assert run(["cohort", str(two), "--out", str(cohort / "two"), "--bids", "-q"]) == 1
    err = capfd.readouterr().err
    assert (
        "2 bad row(s)" in err
        and "row 3 (sub-02): id sub-02 from T2w to T1w is also row 2's" in err
        and "row 4 (sub-03)" in err
    )
    assert not (cohort / "two").exists()
    assert 'href="sub-01/ses-a/anat/sub-01_ses-a_from-FLAIR_to-T1w_desc-qc.png"' in (out / "report.html").read_text()


def test_rows_whose_process_is_gone_read_failed_with_why_and_only_failed_runs_them(cohort, capfd):
    """Claims left by processes that are gone (SIGKILL: nothing of theirs ran on): one past its
    SLURM job's time limit, one whose last memory reading was 90 % of its limit, one unexplained."""
    out, host = cohort / "out", socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()
    claims = {"sub-0": {"slurm_job": "77", "ends": time.time() - 5}, "sub-1": {}, "sub-2": {}}
    for row, context in claims.items():
        (out / row).mkdir(parents=True)
        claim = {"host": host, "pid": gone.pid, "since": time.time() - 60, **context}
        (out / row / f".{row}_log.txt.claim").write_text(json.dumps(claim))
    reading = "memory: 690 MiB resident, 90 % of its 762 MiB limit"
    (out / "sub-1" / "sub-1_log.txt").write_text(f"2026-01-01T00:00:00 {host}:{gone.pid} {reading}\n")
    args = ["cohort", str(cohort / "manifest.csv"), "--out", str(out)]
    assert run([*args, "--report-only"]) == 1
    summary = _summary(out)
    assert "time limit of its SLURM job 77" in summary["sub-0"]["error"]
    assert summary["sub-1"]["error"].startswith(f"killed for memory: {reading[8:]}")
    assert summary["sub-2"]["error"].startswith(f"its process {host}:{gone.pid} stopped before the row ended")
    assert {summary[f"sub-{i}"]["status"] for i in range(3)} == {"failed"}
    assert summary["sub-3"]["status"] == summary["sub-4"]["status"] == "not run"
    capfd.readouterr()
    assert run([*args, *LOCAL, "--only-failed"]) == 0
    summary = _summary(out)
    assert [summary[f"sub-{i}"]["status"] for i in range(5)] == ["done"] * 3 + ["not run"] * 2
    assert "took over the claim" in (out / "sub-1" / "sub-1_log.txt").read_text()
    assert not list(out.glob("**/.*.claim"))
