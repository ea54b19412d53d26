"""The affine MS-ODENet kind: its velocity fit, its training pairs, registration with it and the
cascades that chain it (rigid -> affine -> deformable, as ANTs' rigid, affine, SyN)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from regode import checkpoint
from regode.cli import app
from regode.grid import Grid
from regode.io import load_transform, write_image
from regode.odenet.config import ModelConfig, MotionRange, TrainConfig
from regode.odenet.kinds import KINDS
from regode.odenet.model import MSODENet
from regode.odenet.motion import affine_pair
from regode.odenet.networks import _offsets, fit_affine_velocity
from regode.rotations import euler_matrix
from regode.sampling import sample
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine
from regode.warp import resample

from .conftest import slab_pair

runner = CliRunner()
OBLIQUE = tuple(euler_matrix(torch.tensor([0.2, -0.3, 0.4], dtype=torch.float64)).numpy().ravel())


def test_affine_velocity_fit_recovers_a_linear_field():
    """Weighted least squares of ``v(r) = M r + t``: exact on an affine field, whatever the weights."""
    gen = torch.Generator().manual_seed(0)
    center = torch.tensor([[3.5, 3.0, 2.5]])
    r = _offsets(torch.zeros(1, 3, 6, 7, 8), center, 2.0, 1, 0.0)
    m, t = torch.randn(3, 3, generator=gen) * 0.02, torch.randn(3, generator=gen)
    field = (r @ m.T + t).reshape(1, 6, 7, 8, 3).permute(0, 4, 1, 2, 3)
    weight = torch.rand(1, 1, 6, 7, 8, generator=gen) + 0.1
    p = fit_affine_velocity(field.double(), weight.double(), center.double(), 2.0, ridge=1e-12)
    torch.testing.assert_close(p[0, :9].reshape(3, 3).float(), m, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p[0, 9:].float(), t, atol=1e-4, rtol=1e-4)


def test_affine_training_pair_truth_maps_fixed_to_moving():
    """The pair's truth (about the fixed centre of mass) carries the fixed image onto the moving one:
    the moving image sampled through it gives back the fixed image (one contrast on both sides)."""
    grid = Grid((40, 40, 40), (4.0, 4.0, 4.0), (-78.0, -78.0, -78.0))
    image = render(phantom_labels(grid, 10, 2), grid, 1)
    motion = MotionRange(max_rotation=15, max_translation=8, max_scale=0.15, max_shear=0.1)
    pair = affine_pair(image, image, grid, motion, torch.Generator().manual_seed(3))
    transform = KINDS["affine"].transform(pair.truth.double(), None, pair.center.double())
    assert float((transform.matrix[0] - torch.eye(3, dtype=torch.float64)).abs().max()) > 0.05  # a real affine
    back = sample(pair.moving, grid, transform(grid.world_points(dtype=torch.float64)[None]).float())
    inner = image > 0.2
    assert float((back - image)[inner].abs().mean()) < 0.05
    assert float((pair.moving - image)[inner].abs().mean()) > 0.1


def _phantom(tmp_path, truth, spacing=(1.5, 1.25, 2.5), size=(96, 100, 56)):
    grid = Grid(size, spacing, (-70.0, -62.0, -70.0), OBLIQUE)
    labels = phantom_labels(grid, 12, 3)
    write_image(render(labels, grid, 1), grid, tmp_path / "f.nii.gz")
    write_image(resample(render(labels, grid, 2), grid, grid, truth.inverse()), grid, tmp_path / "m.nii.gz")
    write_image(resample(labels.float(), grid, grid, truth.inverse(), "label"), grid, tmp_path / "ml.nii.gz", np.int16)
    return grid, labels


def _known_affine(grid_center) -> Affine:
    rotation = euler_matrix(torch.tensor([0.1, -0.15, 0.2], dtype=torch.float64))
    shear = torch.eye(3, dtype=torch.float64)
    shear[0, 1], shear[1, 2] = 0.08, -0.06
    matrix = rotation @ shear @ torch.diag(torch.tensor([1.1, 0.92, 1.05], dtype=torch.float64))
    return Affine(
        matrix[None], torch.tensor([[5.0, -4.0, 3.0]], dtype=torch.float64), torch.as_tensor(grid_center)[None]
    )


def test_register_affine_recovers_scale_shear_rotation_and_shift(tmp_path):
    """The shipped affine model and its polish, on an oblique, anisotropic phantom moved by scales of
    0.92 to 1.1, two shears, a rotation of about 15 degrees and a shift: the written .mat maps fixed
    points to moving points to about a millimetre, and a rigid model cannot."""
    grid = Grid((96, 100, 56), (1.5, 1.25, 2.5), (-70.0, -62.0, -70.0), OBLIQUE)
    truth = _known_affine(grid.center)
    _phantom(tmp_path, truth)
    pts = (
        torch.as_tensor(grid.center)[None, None]
        + torch.randn(1, 300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 30
    )
    errors = {}
    for model in ("affine", "rigid"):
        out = str(tmp_path / f"{model}_")
        result = runner.invoke(
            app,
            [
                "register",
                "-f",
                str(tmp_path / "f.nii.gz"),
                "-m",
                str(tmp_path / "m.nii.gz"),
                "-o",
                out,
                "--model",
                model,
            ],
        )
        assert result.exit_code == 0, result.output
        found = load_transform(out + "0GenericAffine.mat")
        errors[model] = float((found(pts) - truth(pts)).norm(dim=-1).square().mean().sqrt())
    assert errors["affine"] < 1.5 and errors["rigid"] > 3.0, errors
    doc = json.loads((tmp_path / "affine_regode.json").read_text())
    assert "affine_polish" in doc["timings_s"] and len(doc["polish"]["affine"]["correction"]["matrix"]) == 3


def _untrained(kind: str, path) -> str:
    model = MSODENet(ModelConfig(kind=kind))
    checkpoint.save(path, "regode.msodenet", model, TrainConfig(model=model.config), 0, 0.0, [])
    return str(path)


@pytest.mark.parametrize("cascade", ["rigid+affine+dense", "affine+bspline"])
def test_label_warping_through_the_cascades_stays_exact(tmp_path, cascade):
    """Labels beyond float32's integers, warped through a cascade: only input values come out, and
    they agree with SimpleITK's nearest-neighbour resampling through the written files (-t 1Warp
    -t 0GenericAffine.mat) nearly everywhere."""
    grid = Grid((64, 72, 40), (3.0, 2.5, 4.0), (-90.0, -85.0, -75.0), OBLIQUE)
    truth = _known_affine(grid.center)
    _phantom(tmp_path, truth, grid.spacing, grid.size)
    labels = sitk.ReadImage(str(tmp_path / "ml.nii.gz"))
    wide = sitk.Mask(sitk.Cast(labels, sitk.sitkInt32) + 100_000_000, sitk.Cast(labels > 0, sitk.sitkUInt8))
    sitk.WriteImage(wide, str(tmp_path / "wide.nii.gz"))
    values = set(np.unique(sitk.GetArrayFromImage(wide)).tolist())
    out = str(tmp_path / "c_")
    args = [
        "register",
        "-f",
        str(tmp_path / "f.nii.gz"),
        "-m",
        str(tmp_path / "m.nii.gz"),
        "-o",
        out,
        "--model",
        cascade,
        "--checkpoint",
        _untrained("affine", tmp_path / "affine.pt"),
        "--moving-labels",
        str(tmp_path / "wide.nii.gz"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    warped = sitk.GetArrayFromImage(sitk.ReadImage(out + "WarpedLabels.nii.gz"))
    assert set(np.unique(warped).tolist()) <= values and len(np.unique(warped)) > 5
    fixed = sitk.ReadImage(str(tmp_path / "f.nii.gz"))
    chain = sitk.CompositeTransform(
        [
            sitk.ReadTransform(out + "0GenericAffine.mat"),
            sitk.DisplacementFieldTransform(sitk.ReadImage(out + "1Warp.nii.gz", sitk.sitkVectorFloat64)),
        ]
    )
    nearest = sitk.GetArrayFromImage(sitk.Resample(wide, fixed, chain, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32))
    inside = nearest > 0
    assert (warped[inside] == nearest[inside]).mean() > 0.9
    doc = json.loads((tmp_path / "c_regode.json").read_text())
    assert list(doc["nfe"]) == cascade.split("+")


def test_affine_polish_keeps_the_candidate_with_the_higher_local_ncc(tmp_path):
    """The affine polish runs with mutual information and with local NCC and keeps the result whose
    local NCC is higher (the record says which, with both scores); switched off, it is the MI polish."""
    from dataclasses import replace

    from regode.io import read_image
    from regode.odenet.model import pyramid
    from regode.odenet.polish import polish_affine, polish_affine_chosen
    from regode.odenet.registry import KINDS
    from regode.preprocess import working_image

    grid = Grid((64, 64, 48), (2.0, 2.0, 2.0), (-64.0, -64.0, -48.0), OBLIQUE)
    truth = _known_affine(grid.center)
    _phantom(tmp_path, truth, spacing=grid.spacing, size=grid.size)
    levels = []
    for name in ("f", "m"):
        volume, g = working_image(read_image(tmp_path / f"{name}.nii.gz"), 2.0, torch.device("cpu"))
        levels.append(pyramid(volume, g, 2))
    start = Affine(torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 3, dtype=torch.float64))
    center = torch.as_tensor(grid.center)
    chosen, record = polish_affine_chosen(*levels, start, center, KINDS["affine"].polish, 0)
    choice = record["similarity_choice"]
    winner = "ncc" if choice["ncc_local_ncc"] > choice["mi_local_ncc"] else "mi"
    assert choice["chosen"] == winner and choice["mi_local_ncc"] != choice["ncc_local_ncc"]
    again, _ = polish_affine(*levels, start, center, KINDS["affine"].polish, 0, metric=winner)
    assert torch.allclose(chosen.homogeneous(), again.homogeneous())
    other, _ = polish_affine(
        *levels, start, center, KINDS["affine"].polish, 0, metric="mi" if winner == "ncc" else "ncc"
    )
    assert not torch.allclose(chosen.homogeneous(), other.homogeneous())
    alone, record = polish_affine_chosen(
        *levels, start, center, replace(KINDS["affine"].polish, ncc_candidate=False), 0
    )
    mi, _ = polish_affine(*levels, start, center, KINDS["affine"].polish, 0)
    assert "similarity_choice" not in record and torch.allclose(alone.homogeneous(), mi.homogeneous())


@pytest.mark.parametrize("headers_off_mm", [0.0, 45.0])
def test_affine_first_models_judge_the_headers_start_after_the_affine_stage(monkeypatch, headers_off_mm):
    """A slab against a whole head in one world space: the head centres' translation is wrong (the
    slab's head is the top of the head) and the headers are right. The affine stage runs from both
    starts and keeps the better; without the headers' start (never tried) it lands far off. With the
    slab's header moved 45 mm off, the head centres are kept."""
    from regode import alignment, api

    fixed, moving, truth, grid = slab_pair(headers_off_mm, OBLIQUE)
    pts = (
        torch.as_tensor(grid.center)[None, None]
        + torch.randn(1, 300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 25
    )

    def error(result):
        return float((result.transform(pts) - truth(pts)).norm(dim=-1).square().mean().sqrt())

    config = api.RegisterConfig(model="affine")
    judged = api.register(fixed, moving, config)
    choice = judged.stats["start_choice"]
    assert choice["gap_mm"] > alignment.START_GAP_MM
    assert choice["chosen"] == ("headers" if headers_off_mm == 0 else "head_centres"), choice
    monkeypatch.setattr(alignment, "START_GAP_MM", float("inf"))
    alone = api.register(fixed, moving, config)
    assert "chosen" not in alone.stats["start_choice"]
    if headers_off_mm == 0:
        assert error(judged) < 2.0 and error(alone) > 3 * error(judged), (error(judged), error(alone))
    else:  # the headers' start tried and dropped: the result is the head centres' own
        assert torch.allclose(alone.transform.as_affine().homogeneous(), judged.transform.as_affine().homogeneous())
