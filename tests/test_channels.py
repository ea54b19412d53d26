"""Several channels (``register -f T1 -f FLAIR -m T1 -m FLAIR``): each channel compared with its own
similarity, as ANTs sums its ``-m`` metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from regode.cli import app
from regode.fitting import similarity
from regode.grid import Grid
from regode.io import Image, write_image
from regode.odenet.config import RegisterConfig
from regode.odenet.register import _fine_level
from regode.preprocess import working_image, working_on
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine, DisplacementField, Rigid
from regode.warp import resample

runner = CliRunner()


def test_a_similarity_per_channel_is_the_mean_of_each_channels():
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 2, 12, 12, 12, generator=gen)
    moved = (fixed + 0.1 * torch.rand(1, 2, 12, 12, 12, generator=gen)).clamp(0, 1)
    one = [similarity(n, fixed[:, c : c + 1], moved[:, c : c + 1]) for c, n in enumerate(("ncc", "mi"))]
    assert torch.isclose(similarity("ncc+mi", fixed, moved), (one[0] + one[1]) / 2)
    both_mi = (similarity("mi", fixed[:, :1], moved[:, :1]) + similarity("mi", fixed[:, 1:], moved[:, 1:])) / 2
    assert torch.isclose(similarity("mi", fixed, moved), both_mi)  # one name: every channel, not one pooled histogram
    with pytest.raises(ValueError, match="3 similarities"):
        similarity("ncc+mi+mse", fixed, moved)


def _structureless_and_shifted():
    """A pair of two channels: the first a smooth head without inner structure, the same in both
    images; the second the anatomy inside it, shifted 4 mm along x in the moving image."""
    grid = Grid((30, 32, 28), (3.0, 3.0, 3.0), (-45.0, -48.0, -42.0))
    labels = phantom_labels(grid, 12, 5)
    inside = (labels > 0).float()
    head = torch.from_numpy(ndimage.gaussian_filter(inside.numpy(), 1.0)).float()
    anatomy = render(labels, grid, 3)
    shift = Rigid(torch.tensor([[0.0, 0.0, 0.0, 4.0, 0.0, 0.0]], dtype=torch.float64))
    moved = resample(anatomy, grid, grid, shift) * inside
    core = torch.from_numpy(ndimage.binary_erosion((labels[0, 0] > 0).numpy(), iterations=3))
    pairs = (
        (Image(head, grid, np.float32), Image(head, grid, np.float32)),
        (Image(anatomy, grid, np.float32), Image(moved, grid, np.float32)),
    )
    return grid, pairs, core


def test_the_second_channel_moves_what_the_first_cannot_see():
    """The fine level with the first channel alone has nothing to follow inside the head and stays
    put; with the second channel it follows that channel's 4 mm shift (the fixed -> moving mapping
    moves fixed points by -4 mm along x)."""
    grid, pairs, core = _structureless_and_shifted()
    device = torch.device("cpu")
    start = DisplacementField(grid, torch.zeros(1, 3, *grid.shape, dtype=torch.float64))
    identity = Affine(torch.eye(3, dtype=torch.float64)[None])
    config = RegisterConfig(model="affine+bspline", metric="ncc")
    along_x = {}
    for n in (1, 2):
        used = pairs[:n]
        fixed, fixed_grid = working_image(used[0][0], 3.0, device)
        moving, moving_grid = working_image(used[0][1], 3.0, device)
        fixed = torch.cat([fixed, *(working_on(f, fixed_grid, device) for f, _ in used[1:])], 1)
        moving = torch.cat([moving, *(working_on(m, moving_grid, device) for _, m in used[1:])], 1)
        field, record = _fine_level(
            used, (fixed, fixed_grid), (moving, moving_grid), identity, start, 3.0, config, (None, None), device
        )
        assert record["metric"] == "+".join(["ncc"] * n)
        along_x[n] = float(field.field[0, 0][core].mean())
    assert abs(along_x[1]) < 0.5 and along_x[2] < -2.5, along_x


@pytest.fixture
def two_channel_pair(tmp_path):
    """T1 and a FLAIR-like contrast (dark where T1 is bright) of one phantom subject, the FLAIR on a
    grid of its own (2.5 mm, another origin); the moving subject is the same moved by a rigid motion,
    its second channel of a third contrast (bright where the fixed FLAIR is dark: a pair for MI)."""
    grid = Grid((36, 40, 32), (2.0, 2.0, 2.0), (-36.0, -40.0, -32.0))
    labels = phantom_labels(grid, 14, seed=2)
    t1 = render(labels, grid, 1)
    flair = torch.where(labels > 0, 1.0 - render(labels, grid, 4), torch.zeros_like(t1))
    flair_grid = Grid((30, 33, 27), (2.5, 2.5, 2.5), (-37.0, -41.0, -33.5))
    motion = Rigid(torch.tensor([[0.05, -0.04, 0.03, 3.0, -2.0, 1.5]], dtype=torch.float64))
    files = {
        "f1": (t1, grid),
        "f2": (resample(flair, grid, flair_grid, Affine(torch.eye(3, dtype=torch.float64)[None])), flair_grid),
        "m1": (resample(t1, grid, grid, motion), grid),
        "m2": (resample(render(labels, grid, 4), grid, flair_grid, motion), flair_grid),  # not inverted
        "labels": (labels, grid),
    }
    for name, (data, on) in files.items():
        write_image(data, on, tmp_path / f"{name}.nii.gz", np.int16 if name == "labels" else np.float32)
    return tmp_path


def test_register_takes_a_channel_per_fixed_and_moving(two_channel_pair):
    """Two channels end to end: each with its own similarity (given as ncc,auto: local NCC for the
    T1s, and for the second channels the one auto judges on them alone, MI), recorded; the outputs
    are the first channel's, on the fixed grid."""
    folder = two_channel_pair
    out = str(folder / "out_")
    f1, f2, m1, m2 = (str(folder / f"{n}.nii.gz") for n in ("f1", "f2", "m1", "m2"))
    args = ["register", "-f", f1, "-f", f2, "-m", m1, "-m", m2, "-o", out, "--model", "affine+bspline"]
    result = runner.invoke(app, [*args, "--metric", "ncc,auto", "--no-qc"])
    assert result.exit_code == 0, result.output
    assert f"{m1} + {m2}" in result.output
    doc = json.loads(open(out + "regode.json").read())
    assert doc["channels"] == [{"fixed": f1, "moving": m1}, {"fixed": f2, "moving": m2}]
    assert doc["config"]["metric"] == ["ncc", "auto"] and doc["inputs"]["fixed"] == [f1, f2]
    fine = doc["polish"]["fine"]
    assert fine["metric"] == "ncc+mi" and len(fine["metric_figures"]) == 2
    assert fine["metric_figures"][0] is None and fine["metric_figures"][1]["r"] < 0.5  # the second channels' own
    from regode.io import read_image

    warped = read_image(out + "Warped.nii.gz").data[0, 0]
    fixed = read_image(f1).data[0, 0]
    inside = fixed > 0.1
    r = np.corrcoef(warped[inside].numpy(), fixed[inside].numpy())[0, 1]
    assert r > 0.9, r


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-f", "{f2}"], "2 --fixed and 1 --moving"),
        (["-f", "{f2}", "-m", "{m2}", "--metric", "ncc,mi,mi"], "one per channel"),
        (["-f", "{f2}", "-m", "{folder}/missing.nii.gz"], "missing.nii.gz"),
    ],
)
def test_channels_that_do_not_pair_up_are_refused(two_channel_pair, extra, message):
    folder = two_channel_pair
    names = {n: str(folder / f"{n}.nii.gz") for n in ("f1", "f2", "m1", "m2")}
    extra = [e.format(folder=folder, **names) for e in extra]
    args = ["register", "-f", names["f1"], "-m", names["m1"], *extra, "-o", str(folder / "bad_"), "--no-qc"]
    result = runner.invoke(app, [*args, "--model", "affine+bspline"])
    assert result.exit_code != 0 and "regode: error:" in result.output and message in result.output, result.output
    assert not list(folder.glob("bad_*"))


def test_fit_field_says_it_takes_one_channel(two_channel_pair):
    folder = two_channel_pair
    f1, f2, m1, m2 = (str(folder / f"{n}.nii.gz") for n in ("f1", "f2", "m1", "m2"))
    result = runner.invoke(app, ["fit-field", "-f", f1, "-f", f2, "-m", m1, "-m", m2, "-o", str(folder / "nir_")])
    assert result.exit_code != 0 and "fit-field registers one channel" in result.output, result.output
