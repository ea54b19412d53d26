"""The fine level (registration ending at the image's resolution) and the similarity chosen for a
pair (local NCC for one contrast, MI across contrasts)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from regode.cli import app
from regode.contrast import choose_similarity, fine_spacing
from regode.errors import RegodeError
from regode.grid import Grid
from regode.io import Image, write_image
from regode.odenet.config import PolishConfig, RegisterConfig
from regode.odenet.register import _fine_level
from regode.preprocess import working_image
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine, BSpline, DisplacementField, Rigid
from regode.warp import resample

runner = CliRunner()


def _rendering(seed: int, noise: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    grid = Grid((40, 40, 40), (2.0, 2.0, 2.0))
    labels = phantom_labels(grid, 10, seed=1)
    return render(labels, grid, seed=seed, noise=noise)[0, 0], labels[0, 0]


def test_one_contrast_gets_ncc_and_two_contrasts_get_mi():
    image, labels = _rendering(1)
    noisy = image * 1.7 + 0.1 + 0.03 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    assert choose_similarity(image, noisy)[0] == "ncc"  # one contrast, rescaled, noisier
    inverted = torch.where(labels > 0, 1.0 - image, torch.zeros_like(image))  # a T2 of a T1: dark where bright
    name, figures = choose_similarity(image, inverted)
    assert name == "mi" and figures["r"] < 0.5
    other, _ = _rendering(7)  # another random contrast of the anatomy: no linear relation
    r = choose_similarity(image, other)[1]
    assert choose_similarity(image, other)[0] == (
        "ncc" if r["r"] > 0 and r["r"] ** 2 >= 0.8 * r["eta2"] and r["eta2"] >= 0.3 else "mi"
    )
    assert choose_similarity(image, torch.zeros_like(image))[0] == "mi"  # nothing to judge: the safe choice


def test_fine_spacing_follows_the_image_down_to_1_mm():
    fine = Grid((10, 10, 10), (0.8, 1.0, 1.2))
    coarse = Grid((10, 10, 10), (2.0, 2.0, 2.0))
    assert fine_spacing(None, fine, 2.0) == 1.0  # never finer than 1 mm by default
    assert fine_spacing(None, coarse, 2.0) is None  # fit-field: not finer than the working grid, no fine level
    assert fine_spacing(None, coarse, 2.0, at_working=True) == 2.0  # register: a finer correction on the same images
    assert fine_spacing(None, Grid((10, 10, 10), (3.0, 3.0, 3.0)), 2.0, at_working=True) is None  # coarser: none
    assert fine_spacing(1.5, coarse, 2.0) == 1.5 and fine_spacing(0.0, fine, 2.0) is None
    assert RegisterConfig(model="affine+dense").fine_request is None  # the inter-subject cascades: on
    assert RegisterConfig(model="dense").fine_request == 0.0  # the others: off
    assert RegisterConfig(model="affine+dense", polish=False).fine_request == 0.0
    with pytest.raises(RegodeError, match="deformable"):
        RegisterConfig(model="rigid+affine", fine_spacing=1.0)
    with pytest.raises(RegodeError, match="no-polish"):
        RegisterConfig(model="dense", fine_spacing=1.0, polish=False)


def test_fine_lattice_is_set_in_mm():
    """The fine levels' lattice strides: the smallest whose lattice is at least lattice_mm (3 mm) on
    each level's images (the fine spacing, and twice it for the coarse level); None keeps the
    strides given. The smoothness weight is the similarity's."""
    fine = PolishConfig().fine
    spacings = (0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
    assert [fine.for_metric("mi", s).levels[-1].stride for s in spacings] == [4, 3, 3, 2, 2, 1, 1]  # images at s mm
    assert [fine.for_metric("mi", s).levels[0].stride for s in spacings] == [2, 2, 2, 1, 1, 1, 1]  # at 2 s mm
    assert [(level.coarseness, level.iterations) for level in fine.for_metric("mi", 2.0).levels] == [(1, 30), (0, 45)]
    assert replace(fine, lattice_mm=None).for_metric("mi", 2.0).levels == fine.levels
    assert (fine.for_metric("mi", 2.0).lambda_grad, fine.for_metric("ncc", 2.0).lambda_grad) == (1.0, 0.4)
    with pytest.raises(RegodeError, match="lattice"):
        replace(fine, lattice_mm=0.0)


@pytest.fixture
def fine_pair(tmp_path):
    """A 1 mm oblique pair: the moving image is the fixed one's anatomy, another contrast, moved by a
    smooth deformation with detail finer than a 2 mm grid resolves."""
    direction = tuple(np.eye(3)[[1, 0, 2]].ravel() * [1, 1, 1, -1, 1, 1, 1, 1, 1])
    grid = Grid((72, 80, 64), (1.0, 1.0, 1.0), (-36.0, -40.0, -32.0), direction)
    labels = phantom_labels(grid, 14, seed=2)
    control = BSpline.control_grid_for(grid, 12.0)
    gen = torch.Generator().manual_seed(0)
    truth = BSpline(control, torch.randn(1, 3, *control.shape, generator=gen, dtype=torch.float64) * 1.5)
    write_image(render(labels, grid, 1), grid, tmp_path / "f.nii.gz")
    write_image(resample(render(labels, grid, 1), grid, grid, _inverse(truth, grid)), grid, tmp_path / "m.nii.gz")
    return tmp_path, grid


def _inverse(transform, grid):
    from regode.transforms import DisplacementField

    return DisplacementField(grid, transform.displacement(grid)).inverse(iterations=50)


def test_register_ends_at_the_image_resolution(fine_pair):
    """affine+dense between 1 mm images: the fine level runs at 1 mm with the similarity chosen for
    the pair (one contrast: local NCC), its loss falls, and the warp is written on the fixed grid
    (at the fixed image's resolution, as every warp); --fine-spacing 0 skips it."""
    folder, grid = fine_pair
    docs = {}
    for name, extra in (("fine", []), ("none", ["--fine-spacing", "0"])):
        out = str(folder / f"{name}_")
        result = runner.invoke(
            app,
            [
                "register",
                "-f",
                str(folder / "f.nii.gz"),
                "-m",
                str(folder / "m.nii.gz"),
                "-o",
                out,
                "--model",
                "affine+dense",
                "--no-qc",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        docs[name] = json.loads(open(out + "regode.json").read())
        warp = sitk.ReadImage(out + "1Warp.nii.gz")
        assert warp.GetSize() == grid.size and np.allclose(warp.GetSpacing(), grid.spacing)
    fine = docs["fine"]["polish"]["fine"]
    assert docs["fine"]["fine_spacing_mm"] == 1.0 and fine["metric"] == "ncc" and fine["spacing_mm"] == 1.0
    assert fine["iterations"] == 30 + 45  # the fine schedule (PolishConfig.fine), not the 2 mm polish's 40 steps
    dense = docs["fine"]["polish"]["dense"]  # the 2 mm dense polish: its own schedule and step, not the B-spline's
    assert dense["iterations"] == 40 and dense["step_mm"] == 0.3
    # 4 mm lattices on the 2 mm images (every second voxel), then 3 mm at 1 mm (every third: fine_lattice_mm)
    assert [stage["name"] for stage in fine["stages"]] == ["1:2", "0:3"]
    for stage in fine["stages"]:
        history = stage["history"]
        assert all(
            -1.0 <= h["similarity"] <= 0 for h in history
        )  # minus local NCC (mutual information would be below -1 here)
        assert history[-1]["similarity"] < history[0]["similarity"]
    assert docs["none"]["fine_spacing_mm"] is None and "fine" not in docs["none"]["polish"]
    assert "fine" in docs["fine"]["timings_s"]


def test_fit_field_fine_level_and_auto_metric(fine_pair):
    """fit-field's fine level: the field is fitted on at 1 mm and evaluated there; --metric auto
    picks local NCC for this one-contrast pair; content features refuse a fine level."""
    folder, grid = fine_pair
    out = str(folder / "n_")
    result = runner.invoke(
        app,
        [
            "fit-field",
            "-f",
            str(folder / "f.nii.gz"),
            "-m",
            str(folder / "m.nii.gz"),
            "-o",
            out,
            "-q",
            "--no-qc",
            "--metric",
            "auto",
            "--fine-spacing",
            "1",
            "--fine-iterations",
            "10",
            "--iterations",
            "20",
            "--coarse-iterations",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(open(out + "regode.json").read())
    assert doc["fine_spacing_mm"] == 1.0 and doc["metric"] == "ncc" and doc["metric_choice"]["r"] > 0.8
    assert doc["fit"][-1]["stages"][0]["name"].startswith("fine:1mm") and doc["fit"][-1]["iterations"] == 10
    result = runner.invoke(
        app,
        [
            "fit-field",
            "-f",
            str(folder / "f.nii.gz"),
            "-m",
            str(folder / "m.nii.gz"),
            "-o",
            str(folder / "c_"),
            "--metric",
            "content",
            "--fine-spacing",
            "1",
        ],
    )
    assert result.exit_code != 0 and "content" in result.output


def test_register_fine_level_also_at_2_mm(fine_pair, monkeypatch):
    """A 2 mm pair (the working spacing): register's fine level still runs there (a finer B-spline
    correction with the pair's similarity), and its loss falls; fit-field's (the same field on the
    same images) does not run."""
    folder, _ = fine_pair
    for name in ("f", "m"):  # the pair at 2 mm, as NiChart's T1s
        image = sitk.ReadImage(str(folder / f"{name}.nii.gz"))
        size = [int(round(n * s / 2.0)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=False)]
        coarse = sitk.Resample(
            image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (2.0, 2.0, 2.0), image.GetDirection()
        )
        sitk.WriteImage(coarse, str(folder / f"{name}2.nii.gz"))
    out = str(folder / "r2_")
    import regode.odenet.register as engine

    schedules, spacings, polish_dense = [], [], engine.polish_dense

    def spy(*args, **kwargs):  # the fine level's schedule and the spacings of its fixed pyramid
        schedules.append(args[4])
        spacings.append([float(level.grid.spacing[0]) for level in args[0]])
        return polish_dense(*args, **kwargs)

    monkeypatch.setattr(engine, "polish_dense", spy)
    result = runner.invoke(
        app,
        [
            "register",
            "-f",
            str(folder / "f2.nii.gz"),
            "-m",
            str(folder / "m2.nii.gz"),
            "-o",
            out,
            "--model",
            "affine+bspline",
            "--no-qc",
        ],
    )
    assert result.exit_code == 0, result.output
    given = PolishConfig()
    (schedule,) = schedules  # its own step, lattice and folding penalty; the 2 mm polishes keep theirs
    assert schedule.levels == given.fine.for_metric("mi", 2.0).levels
    assert schedule.lambda_fold == given.fine.lambda_fold != given.bspline.lambda_fold  # its own folding penalty
    assert spacings == [[4.0, 2.0]]  # the images at twice the fine spacing, then at it
    doc = json.loads(open(out + "regode.json").read())
    fine = doc["polish"]["fine"]
    assert doc["fine_spacing_mm"] == 2.0 and fine["spacing_mm"] == 2.0
    assert fine["step_mm"] == given.fine.step not in (given.bspline.step, given.dense.step)
    # 4 mm lattices: every voxel of the 4 mm images, then every second voxel at 2 mm (fine_lattice_mm)
    assert [stage["name"] for stage in fine["stages"]] == ["1:1", "0:2"]
    coarse = fine["stages"][0]["history"]
    assert coarse[-1]["similarity"] < coarse[0]["similarity"]
    result = runner.invoke(
        app,
        [
            "register",
            "-f",
            str(folder / "f2.nii.gz"),
            "-m",
            str(folder / "m2.nii.gz"),
            "-o",
            str(folder / "r0_"),
            "--model",
            "affine+bspline",
            "--no-qc",
            "--fine-spacing",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    fixed = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "f2.nii.gz"))).ravel()

    def correlation(prefix):  # of the warped moving image with the fixed one
        return np.corrcoef(
            fixed, sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{prefix}Warped.nii.gz"))).ravel()
        )[0, 1]

    assert correlation("r2_") > correlation("r0_")  # the fine level improves the match
    out = str(folder / "n2_")
    result = runner.invoke(
        app,
        [
            "fit-field",
            "-f",
            str(folder / "f2.nii.gz"),
            "-m",
            str(folder / "m2.nii.gz"),
            "-o",
            out,
            "-q",
            "--no-qc",
            "--preset",
            "inter-subject",
            "--iterations",
            "10",
            "--coarse-iterations",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(open(out + "regode.json").read())["fine_spacing_mm"] is None


def test_register_fine_level_masks_hold_on_every_level():
    """The fine level's fixed mask (ANTs' -x) on both levels of its pyramid: a moving image that
    differs from the fixed one only in its left half (shifted 6 mm there) pulls the correction there
    unmasked; with a fixed mask of the right half, nothing does, on the coarse level or the fine."""
    grid = Grid((40, 44, 36), (3.0, 3.0, 3.0), (-60.0, -66.0, -54.0))
    fixed = render(phantom_labels(grid, 16, 5), grid, 1)
    moved = resample(fixed, grid, grid, Rigid(torch.tensor([[0.0, 0.0, 0.0, 6.0, 0.0, 0.0]], dtype=torch.float64)))
    left = torch.zeros_like(fixed, dtype=torch.bool)
    left[..., : grid.size[0] // 2] = True  # x is the last tensor axis
    images = Image(fixed, grid, np.float32), Image(torch.where(left, moved, fixed), grid, np.float32)
    mask = Image((~left).float(), grid, np.uint8)
    working = [working_image(image, 3.0, torch.device("cpu")) for image in images]
    start = DisplacementField(grid, torch.zeros(1, 3, *grid.shape, dtype=torch.float64))
    config = RegisterConfig(model="affine+bspline", metric="ncc")
    identity = Affine(torch.eye(3, dtype=torch.float64)[None])
    inner = left.clone()
    inner[..., grid.size[0] // 2 - 4 :] = False  # away from the mask's edge
    sizes = {}
    for name, masks in (("free", (None, None)), ("masked", (mask, None))):
        field, record = _fine_level((images,), *working, identity, start, 3.0, config, masks, torch.device("cpu"))
        assert [stage["name"] for stage in record["stages"]] == ["1:1", "0:1"]  # 6 mm images, then 3 mm: every voxel
        sizes[name] = float(field.field[0].norm(dim=0)[inner[0, 0]].mean())
    assert sizes["free"] > 1.0 and sizes["masked"] < 0.4 * sizes["free"], sizes
