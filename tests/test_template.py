"""``regode template`` and :func:`regode.template.build_template` on phantoms that differ from one
shape by known affine maps and smooth warps, in pairs that cancel: the template must recover that
shape (its labels by majority vote), be unbiased (the subjects' final maps average to the
identity), go on after a kill, and average a second channel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from regode.cli.app import run
from regode.cohort.template import Subject
from regode.grid import Grid
from regode.io import write_image
from regode.synthetic import phantom_labels, render, smooth_noise
from regode.transforms import Affine, Compose, DisplacementField
from regode.warp import resample

GRID = Grid((28, 32, 26), (2.0, 2.0, 2.0), (-27.0, -31.0, -25.0))
REGODE = [sys.executable, "-c", "from regode.cli import main; main()"]


def _phantoms(folder, pairs: int = 3):
    """The shape's labels, and 2 x ``pairs`` subjects: maps A (x + u) and their opposites
    (I - E) (x - u), so that each pair's maps average to the identity up to E u."""
    shape = phantom_labels(GRID, 6, 0).to(torch.float32)
    subjects = []
    for p in range(pairs):
        gen = torch.Generator().manual_seed(p)
        e = (torch.rand(3, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.12
        t = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 6.0
        u = smooth_noise(GRID, 16.0, 1.2, seed=10 + p)
        for sign in (1, -1):
            i = len(subjects)
            warp = Compose(
                [Affine(torch.eye(3, dtype=torch.float64) + sign * e, sign * t), DisplacementField(GRID, sign * u)]
            )
            labels = resample(shape[None, None], GRID, GRID, warp, "label")
            write_image(render(labels[0, 0], GRID, seed=i), GRID, folder / f"t1_{i}.nii.gz")
            write_image(render(labels[0, 0], GRID, seed=50 + i, bias=0.0), GRID, folder / f"t2_{i}.nii.gz")
            write_image(labels[0, 0], GRID, folder / f"labels_{i}.nii.gz", np.int16)
            subjects.append(
                Subject(
                    f"sub-{i}", (folder / f"t1_{i}.nii.gz", folder / f"t2_{i}.nii.gz"), folder / f"labels_{i}.nii.gz"
                )
            )
    return shape.numpy().reshape(GRID.shape), subjects


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    labels = [v for v in np.unique(a) if v > 0]
    return float(np.mean([2 * ((a == v) & (b == v)).sum() / ((a == v).sum() + (b == v).sum()) for v in labels]))


def _manifest(folder, subjects) -> Path:
    lines = ["id,t1,t2,labels"] + [f"{s.id},{s.images[0].name},{s.images[1].name},{s.labels.name}" for s in subjects]
    (folder / "subjects.csv").write_text("\n".join(lines) + "\n")
    return folder / "subjects.csv"


def test_a_template_of_phantoms_recovers_their_mean_shape_unbiased(tmp_path, capsys):
    shape, subjects = _phantoms(tmp_path)
    out = tmp_path / "template"
    args = [
        "template",
        str(_manifest(tmp_path, subjects)),
        "--out",
        str(out),
        "--iterations",
        "2",
        "--threads",
        "1",
        "-q",
    ]
    assert run(args) == 0
    document = json.loads((out / "template.json").read_text())
    vote = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "template_labels.nii.gz")))
    assert _dice(shape.astype(int), vote) >= 0.9, document["updates"]
    assert document["final_mean_displacement_mm"] < 0.5, document  # unbiased
    updates = [u["update_mm_mean"] for u in document["updates"]]
    assert updates[1] < updates[0], updates  # the deformable rounds move it less than the affine start
    t1, t2 = (sitk.ReadImage(str(out / f"template_{c}.nii.gz")) for c in ("t1", "t2"))
    assert t1.GetSize() == t2.GetSize() == GRID.size
    brain = shape > 0  # the second channel lands where the first is: both bright over the shape
    for image in (t1, t2):
        data = sitk.GetArrayFromImage(image)
        assert data[brain].mean() > 4 * data[~brain].mean()
    jacobian = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "sub-0" / "sub-0_logJacobian.nii.gz")))
    assert np.isfinite(jacobian).all() and abs(float(np.median(jacobian[brain]))) < 0.2
    assert "update per round (mm)" in capsys.readouterr().out
    again = [*args[:-3], "--iterations", "3", "--threads", "1", "-q"]  # other settings on the same folder
    assert run(again) == 1
    assert "holds a template built with other settings (iterations)" in capsys.readouterr().err


def test_a_template_killed_mid_round_goes_on_from_what_is_in_place(tmp_path):
    _, subjects = _phantoms(tmp_path, pairs=2)
    out = tmp_path / "template"
    args = ["template", str(_manifest(tmp_path, subjects)), "--out", str(out), "--iterations", "1", "--threads", "1",
            "--workers", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen(
        [*REGODE, *args], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("iterations/round-1/*/*_regode.json")):
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers, in round 1
        proc.wait()
    assert list(out.glob("iterations/round-1/*/*_regode.json")), "the kill should land in round 1"
    assert not (out / "template_t1.nii.gz").exists()
    assert run(args) == 0
    for log in out.glob("iterations/round-*/*/*_log.txt"):  # no row run to its end twice
        assert log.read_text().count(" done in ") == 1, log.read_text()
    assert (out / "template_t1.nii.gz").is_file() and not list(out.glob("**/.regode-*"))
    pictures = sorted(p.name for p in (out / "iterations").glob("template-*.png"))
    assert pictures == ["template-1.png", "template-2.png"]  # the affine start's and the round's


def test_a_template_manifest_without_channels_is_refused(tmp_path, capsys):
    (tmp_path / "subjects.csv").write_text("id,labels\nsub-0,a.nii.gz\nsub-1,b.nii.gz\n")
    assert run(["template", str(tmp_path / "subjects.csv"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("regode: error: ") and "subjects.csv" in err and "column per channel" in err
    (tmp_path / "subjects.csv").write_text("id,t1\nsub-0,a.nii.gz\nsub-1,\n")
    assert run(["template", str(tmp_path / "subjects.csv"), "--out", str(tmp_path / "out")]) == 1
    assert "line 2: the t1 image 'a.nii.gz' is not a file" in capsys.readouterr().err
