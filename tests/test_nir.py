"""NIR (``regode fit-field``): neural fields, samplers, losses, fitting and the command's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from regode.bench.metrics import jacobian_determinant
from regode.bench.motion import inverse_on
from regode.cli import app
from regode.errors import RegodeError
from regode.grid import Grid
from regode.io import Image, load_transform_chain, write_image
from regode.lattice import downsize, patches, region_of
from regode.losses import folding_penalty, lattice_jacobian, local_ncc
from regode.nir.config import FieldConfig, FitConfig
from regode.nir.fields import FieldTransform, NeuralField
from regode.nir.fit import fit_images
from regode.rotations import euler_matrix
from regode.synthetic import phantom_labels, random_bspline, render
from regode.transforms import Affine, Rigid
from regode.transforms import integrate_velocity as flow
from regode.warp import resample

from .conftest import oblique_direction

runner = CliRunner()
GRID = Grid((36, 40, 32), (2.0, 2.0, 2.0), (-36.0, -40.0, -30.0), oblique_direction((0.2, -0.1, 0.3)))
FAST = dict(stride=2)


@pytest.fixture(scope="module")
def warped_pair():
    """A phantom and a copy moved by a known smooth B-spline warp (truth: fixed -> moving)."""
    labels = phantom_labels(GRID, 16, 1)
    image = render(labels, GRID, 1)
    truth = random_bspline(GRID, 24.0, 3.0, 5)
    moving = resample(image, GRID, GRID, inverse_on(truth, GRID))
    return image, moving, truth, (labels[0, 0] > 0).numpy()


def _rmse(displacement: torch.Tensor, truth: torch.Tensor, mask: np.ndarray) -> float:
    diff = (displacement[0].double() - truth[0].double()).numpy()
    return float(np.sqrt((diff**2).sum(0)[mask].mean()))


# ------------------------------------------------------------------------------------ fields
@pytest.mark.parametrize("encoding,activation", [("grid", "relu"), ("fourier", "relu"), ("none", "sine")])
def test_untrained_field_is_the_identity(encoding, activation):
    """The last layer starts at zero: displacement and velocity fields both map x to x."""
    torch.manual_seed(0)
    field = NeuralField(GRID, FieldConfig(encoding=encoding, activation=activation))
    points = torch.as_tensor(GRID.world_points(torch.float32))[None]
    with torch.no_grad():
        assert float(field(points).abs().max()) == 0.0
    assert torch.allclose(flow(field, points, 4, "rk4"), points)
    with torch.no_grad():
        for diffeomorphic in (False, True):
            assert float(FieldTransform(field, diffeomorphic).displacement(GRID).abs().max()) == 0.0


def test_flow_of_a_constant_velocity_is_a_translation_and_reverses():
    class Constant(torch.nn.Module):
        def forward(self, y):
            return torch.tensor([3.0, -1.5, 2.0]).expand_as(y)

    points = torch.randn(5, 3) * 20
    moved = flow(Constant(), points, 3, "euler")
    assert torch.allclose(moved, points + torch.tensor([3.0, -1.5, 2.0]), atol=1e-5)
    assert torch.allclose(flow(Constant(), moved, 3, "rk4", reverse=True), points, atol=1e-5)


# ---------------------------------------------------------------------------------- samplers
def test_downsize_sampler_covers_the_region():
    """Each lattice is STRIDE times coarser along the region's own axes, and over random offsets the
    samples reach every voxel position along each axis (within a quarter voxel), from half a voxel
    outside the region to half a lattice step past it."""
    region = Grid((13, 10, 7), (1.5, 2.0, 2.5), (4.0, -3.0, 7.0), oblique_direction())
    gen = torch.Generator().manual_seed(0)
    lattices = [downsize(region, 3, gen) for _ in range(60)]
    first = lattices[0]
    assert first.points.shape == (1, 3, 4, 5, 3)  # (nz, ny, nx) = ceil(n / 3)
    expected = region.direction_matrix * np.asarray(region.spacing)[None] * 3
    assert np.allclose(first.step.numpy(), expected, atol=1e-5)
    index = np.concatenate([region.world_to_index(lat.points.reshape(-1, 3).double().numpy()) for lat in lattices])
    assert not np.allclose(lattices[0].points, lattices[1].points)
    for axis, n in enumerate(region.size):
        gaps = np.abs(np.arange(n)[:, None] - index[None, :, axis]).min(1)
        assert gaps.max() < 0.25, axis
    assert index.min() > -1.5 + 1e-6 and (index.max(0) < np.asarray(region.size) + 1).all()


def test_patch_sampler_draws_cubes_inside_the_region():
    region = Grid((30, 24, 20), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), oblique_direction())
    lattice = patches(region, 8, 5, torch.Generator().manual_seed(1))
    assert lattice.points.shape == (5, 8, 8, 8, 3)
    index = region.world_to_index(lattice.points.double().numpy())
    assert index.min() >= -1e-4 and (index.max((0, 1, 2, 3)) <= np.asarray(region.size) - 1 + 1e-4).all()
    steps = np.diff(index, axis=3)  # along i inside each patch: one voxel
    assert np.allclose(steps, [1, 0, 0], atol=1e-4)
    corners = index[:, 0, 0, 0]
    assert len({tuple(np.round(c, 3)) for c in corners}) == 5


def test_region_is_the_foreground_box_with_a_margin():
    grid = Grid((20, 20, 20), (2.0, 2.0, 2.0))
    volume = torch.zeros(1, 1, 20, 20, 20)
    volume[0, 0, 5:8, 10:12, 3:15] = 1.0  # z 5..7, y 10..11, x 3..14
    region = region_of(volume, grid, margin=4.0)
    assert region.size == (16, 6, 7) and np.allclose(region.origin, [2.0, 16.0, 6.0])


# ------------------------------------------------------------------------------------ losses
def test_lattice_jacobian_of_a_linear_map_and_folding():
    step = torch.as_tensor(oblique_direction(), dtype=torch.float32).reshape(3, 3) * 2
    a = torch.tensor([[1.2, 0.1, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 1.1]])
    k, j, i = torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij")
    points = i[..., None] * step[:, 0] + j[..., None] * step[:, 1] + k[..., None] * step[:, 2]
    jac = lattice_jacobian((points @ a.T)[None], step)
    assert torch.allclose(jac, a.expand_as(jac), atol=1e-4)
    assert float(folding_penalty(jac)) == 0.0
    mirrored = lattice_jacobian((points * torch.tensor([-1.0, 1, 1]))[None], step)
    assert float(folding_penalty(mirrored)) == pytest.approx(1.1, abs=1e-4)


def test_local_ncc_ignores_contrast_changes_but_not_misalignment():
    a = torch.rand(1, 1, 12, 12, 12)
    assert float(local_ncc(a, 3 * a + 1)) > 0.99
    assert float(local_ncc(a, torch.roll(a, 2, 2))) < 0.3


# ----------------------------------------------------------------------------------- fitting
def test_fit_recovers_a_known_smooth_warp(warped_pair):
    """A 3 mm (sd per control point) B-spline warp on a 2 mm, oblique 36x40x32 pair is recovered
    to RMSE(phi) < 0.8 mm from 2.1 mm, without folding."""
    image, moving, truth, mask = warped_pair
    result = fit_images(Image(image, GRID, np.float32), Image(moving, GRID, np.float32), FitConfig(**FAST))
    truth_disp = truth.displacement(GRID)
    before = _rmse(torch.zeros_like(truth_disp), truth_disp, mask)
    after = _rmse(result.field.field, truth_disp, mask)
    assert before > 2.0 and after < 0.8, (before, after)
    assert (jacobian_determinant(result.field.field[0].double().numpy(), GRID) > 0).all()


def test_mutual_information_fit_works_across_contrasts(warped_pair):
    """The moving image in another contrast (a different rendering of the labels): MI still
    recovers the warp (to < 1 mm from 2.1 mm), clearly better than MSE, which assumes one contrast."""
    image, _, truth, mask = warped_pair
    labels = phantom_labels(GRID, 16, 1)
    other = resample(render(labels, GRID, 7), GRID, GRID, inverse_on(truth, GRID))
    pair = Image(image, GRID, np.float32), Image(other, GRID, np.float32)
    truth_disp = truth.displacement(GRID)
    with_mi = _rmse(fit_images(*pair, FitConfig(**FAST)).field.field, truth_disp, mask)
    with_mse = _rmse(fit_images(*pair, FitConfig(**FAST, metric="mse")).field.field, truth_disp, mask)
    assert with_mi < 1.0 and with_mi < 0.7 * with_mse, (with_mi, with_mse)


def test_affine_stage_recovers_a_linear_misalignment():
    """With ``affine``, a pair related by a 6 % scaling, an 8 degree rotation and a 5 mm shift (no
    initial transform given) is aligned: the linear part is found and the whole mapping is within
    1 mm of the truth over the brain."""
    labels = phantom_labels(GRID, 16, 4)
    image = render(labels, GRID, 4)
    c = torch.as_tensor(GRID.center)[None]
    matrix = 1.06 * euler_matrix(torch.tensor([0.0, 0.05, np.deg2rad(8)], dtype=torch.float64))
    truth = Affine(matrix, torch.tensor([[5.0, -3.0, 2.0]], dtype=torch.float64), c)
    moving = resample(image, GRID, GRID, truth.inverse())
    result = fit_images(
        Image(image, GRID, np.float32),
        Image(moving, GRID, np.float32),
        FitConfig(**FAST, affine=True, center_of_mass=True),
    )
    mask = torch.as_tensor((labels[0, 0] > 0).numpy())
    points = torch.as_tensor(GRID.world_points(torch.float64))[None]
    error = (result.transform.double()(points) - truth(points)).norm(dim=-1)[0][mask]
    assert float(error.square().mean().sqrt()) < 1.0
    assert float((result.linear.matrix[0] - matrix).abs().max()) < 0.03


def test_thin_images_and_bad_options():
    """A 6-slice image still has finite differences at the coarse stride; bad option values are
    one clear error."""
    grid = Grid((40, 40, 6), (2.0, 2.0, 2.0))
    image = render(phantom_labels(grid, 8, 1), grid, 1)
    result = fit_images(
        Image(image, grid, np.float32), Image(image, grid, np.float32), FitConfig(iterations=5, coarse_iterations=5)
    )
    assert bool(torch.isfinite(result.field.field).all())
    for bad in (dict(spacing=0.0), dict(lr=-1.0), dict(stride=0)):
        with pytest.raises(RegodeError):
            FitConfig(**bad)


def test_diffeomorphic_mode_does_not_fold_where_displacement_mode_does():
    """A large warp (12 mm sd on a 16 mm control grid), fitted with a weak smoothness term and no
    folding penalty: the displacement field folds, the integrated velocity field does not, and its
    inverse is the reverse flow."""
    labels = phantom_labels(GRID, 16, 2)
    image = render(labels, GRID, 2)
    truth = random_bspline(GRID, 16.0, 12.0, 3)
    moving = resample(image, GRID, GRID, truth)
    pair = (Image(image, GRID, np.float32), Image(moving, GRID, np.float32))
    free = dict(FAST, lambda_fold=0.0, lambda_grad=0.3)
    plain = fit_images(*pair, FitConfig(**free))
    diffeo = fit_images(*pair, FitConfig(**free, diffeomorphic=True))
    det_plain = jacobian_determinant(plain.field.field[0].double().numpy(), GRID)
    det_diffeo = jacobian_determinant(diffeo.field.field[0].double().numpy(), GRID)
    assert (det_plain <= 0).sum() >= 10  # 20 of 46 080 voxels fold (24 before normalise's rounding tolerance)
    assert (det_diffeo > 0).all()
    points = torch.as_tensor(GRID.world_points(torch.float32))[None]
    there = diffeo.field(points)
    back = diffeo.inverse_field(there)
    inner = torch.as_tensor(mask_inner(GRID, 4))[None]
    assert float((back - points).norm(dim=-1)[inner].median()) < 0.5


def mask_inner(grid: Grid, margin: int) -> np.ndarray:
    mask = np.zeros(grid.shape, bool)
    mask[margin:-margin, margin:-margin, margin:-margin] = True
    return mask


# ------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, warped_pair):
    """The warped pair on disk, the moving image also shifted by a known translation."""
    folder = tmp_path_factory.mktemp("nir")
    image, moving, truth, _ = warped_pair
    shift = Rigid(torch.tensor([[0.0, 0.0, 0.0, 6.0, -4.0, 2.0]], dtype=torch.float64))
    write_image(image, GRID, folder / "fixed.nii.gz")
    write_image(resample(moving, GRID, GRID, shift.inverse()), GRID, folder / "moving.nii.gz")
    write_image(moving, GRID, folder / "moving_aligned.nii.gz")
    sitk.WriteTransform(sitk.TranslationTransform(3, (6.0, -4.0, 2.0)), str(folder / "shift.mat"))
    labels = phantom_labels(GRID, 16, 1).float()
    write_image(
        resample(labels, GRID, GRID, inverse_on(truth, GRID), "label"), GRID, folder / "labels.nii.gz", np.int16
    )
    return folder, truth


def test_fit_field_writes_ants_files_after_a_linear_start(pair_files, tmp_path):
    """``--initial-transform`` takes a linear result (here the known shift): the files map fixed
    points to moving points as ``-t 1Warp -t 0GenericAffine.mat`` in SimpleITK, the inverse warp
    undoes the warp, labels stay labels, and the JSON records the config."""
    folder, truth = pair_files
    out = str(tmp_path / "n_")
    args = [
        "fit-field",
        "-f",
        str(folder / "fixed.nii.gz"),
        "-m",
        str(folder / "moving.nii.gz"),
        "-o",
        out,
        "--initial-transform",
        str(folder / "shift.mat"),
        "--stride",
        "2",
        "--iterations",
        "80",
        "--moving-labels",
        str(folder / "labels.nii.gz"),
        "--quiet",
        "--threads",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    warp = sitk.ReadImage(out + "1Warp.nii.gz", sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(
        [sitk.ReadTransform(out + "0GenericAffine.mat"), sitk.DisplacementFieldTransform(warp)]
    )
    rng = np.random.default_rng(0)
    points = GRID.index_to_world(rng.uniform(8, np.asarray(GRID.size) - 9, (200, 3)))
    found = np.array([composite.TransformPoint(tuple(p)) for p in points])
    expected = truth(torch.as_tensor(points)[None])[0].numpy() + [6.0, -4.0, 2.0]
    assert np.sqrt(((found - expected) ** 2).sum(1).mean()) < 1.2
    ours = load_transform_chain([out + "1Warp.nii.gz", out + "0GenericAffine.mat"])
    assert np.allclose(ours(torch.as_tensor(points)[None])[0].numpy(), found, atol=1e-3)
    inverse = load_transform_chain([out + "1InverseWarp.nii.gz"])
    forward = load_transform_chain([out + "1Warp.nii.gz"])
    there = forward(torch.as_tensor(points)[None])
    assert float((inverse(there)[0] - torch.as_tensor(points)).norm(dim=-1).median()) < 0.2
    warped_labels = sitk.ReadImage(out + "WarpedLabels.nii.gz")
    assert warped_labels.GetPixelID() == sitk.sitkInt16
    assert set(np.unique(sitk.GetArrayFromImage(warped_labels))) <= set(range(16))
    doc = json.loads((tmp_path / "n_regode.json").read_text())
    assert doc["command"] == "fit-field" and doc["config"]["iterations"] == 80 and doc["config"]["seed"] == 0
    assert "wall" in doc["timings_s"]


def test_fit_field_is_reproducible(pair_files, tmp_path):
    folder, _ = pair_files
    fields = []
    for name in ("a_", "b_"):
        out = str(tmp_path / name)
        args = [
            "fit-field",
            "-f",
            str(folder / "fixed.nii.gz"),
            "-m",
            str(folder / "moving_aligned.nii.gz"),
            "-o",
            out,
            "--sampler",
            "hybrid",
            "--iterations",
            "5",
            "--refine-iterations",
            "3",
            "--quiet",
            "--seed",
            "4",
        ]
        assert runner.invoke(app, args).exit_code == 0
        fields.append(sitk.GetArrayFromImage(sitk.ReadImage(out + "1Warp.nii.gz")))
    assert np.abs(fields[0]).max() > 0 and np.array_equal(fields[0], fields[1])


def test_fit_field_bad_inputs(pair_files, tmp_path):
    folder, _ = pair_files
    f, m = str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz")
    nan = np.ones((10, 10, 10), np.float32)
    nan[5, 5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nii.gz"))
    sitk.WriteImage(sitk.Image([10, 10, 10, 2], sitk.sitkFloat32), str(tmp_path / "four.nii.gz"))
    cases = [
        ([str(tmp_path / "missing.nii.gz"), m], "missing.nii.gz"),
        ([str(tmp_path / "nan.nii.gz"), m], "NaN"),
        ([str(tmp_path / "four.nii.gz"), m], "4D"),
    ]
    for (fixed, moving), words in cases:
        out = str(tmp_path / "bad_")
        result = runner.invoke(app, ["fit-field", "-f", fixed, "-m", moving, "-o", out, "--iterations", "2", "--quiet"])
        assert result.exit_code == 1 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not list(tmp_path.glob("bad_*"))
    result = runner.invoke(app, ["fit-field", "-f", f, "-m", m, "-o", str(tmp_path / "nofolder" / "x_"), "--quiet"])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_field_transform_is_a_transform_with_a_separable_grid_path():
    """A neural field is a Transform: its grid evaluation (separable, in slabs) equals mapping the
    grid's points, and a velocity field's inverse undoes it."""
    torch.manual_seed(3)
    network = NeuralField(GRID, FieldConfig())
    for p in network.mlp[-1].parameters():
        p.data.normal_(0, 0.5)
    points = GRID.world_points(torch.float32)[None]
    with torch.no_grad():
        field = FieldTransform(network)
        torch.testing.assert_close(field.map_grid(GRID), field(points), atol=1e-4, rtol=0)
        assert float((field(points) - points).abs().max()) > 0.1
        velocity = FieldTransform(network, diffeomorphic=True, steps=8, solver="rk4")
        back = velocity.inverse()(velocity(points))
        assert float((back - points).norm(dim=-1).max()) < 1e-2
    with pytest.raises(ValueError):
        field.inverse()


def test_mind_fit_works_across_contrasts(warped_pair):
    """MIND descriptors (the hand-made modality-independent metric) recover a cross-contrast warp
    to about half its size (2.1 mm before)."""
    image, _, truth, mask = warped_pair
    labels = phantom_labels(GRID, 16, 1)
    other = resample(render(labels, GRID, 7), GRID, GRID, inverse_on(truth, GRID))
    truth_disp = truth.displacement(GRID)
    before = _rmse(torch.zeros_like(truth_disp), truth_disp, mask)
    after = _rmse(
        fit_images(
            Image(image, GRID, np.float32), Image(other, GRID, np.float32), FitConfig(**FAST, metric="mind")
        ).field.field,
        truth_disp,
        mask,
    )
    assert after < 0.6 * before, (before, after)


def test_fit_field_content_metric_uses_the_given_encoder(pair_files, tmp_path):
    from regode.encoder.config import EncoderConfig, EncoderTrainConfig
    from regode.encoder.train import train as train_encoder

    folder, _ = pair_files
    encoder = tmp_path / "enc.pt"
    tiny = dict(width=4, content=8, style=4, blocks=1)
    train_encoder(
        EncoderTrainConfig(model=EncoderConfig(**tiny), steps=1, batch=1, size=24, val_batches=1),
        encoder,
        progress=False,
    )
    coarse = tmp_path / "coarse.pt"  # trained on 8 mm slices: refused for a 2 mm fit
    train_encoder(
        EncoderTrainConfig(model=EncoderConfig(**tiny, spacing=8.0), steps=1, batch=1, size=24, val_batches=1),
        coarse,
        progress=False,
    )
    out = str(tmp_path / "c_")
    args = [
        "fit-field",
        "-f",
        str(folder / "fixed.nii.gz"),
        "-m",
        str(folder / "moving_aligned.nii.gz"),
        "-o",
        out,
        "--iterations",
        "3",
        "--coarse-iterations",
        "2",
        "--metric",
        "content",
        "--quiet",
    ]
    result = runner.invoke(app, args + ["--encoder", str(encoder)])
    assert result.exit_code == 0, result.output
    doc = json.loads(Path(out + "regode.json").read_text())
    assert doc["config"]["metric"] == "content" and doc["config"]["encoder"] == str(encoder)
    assert Path(out + "1Warp.nii.gz").exists()
    result = runner.invoke(app, args[:-1] + ["--encoder", str(tmp_path / "none.pt"), "-o", str(tmp_path / "d_")])
    assert result.exit_code == 1 and "not found" in result.output and not list(tmp_path.glob("d_*"))
    result = runner.invoke(app, args[:-1] + ["--encoder", str(coarse), "-o", str(tmp_path / "e_")])
    assert result.exit_code == 1 and "trained on 8 mm slices" in result.output and not list(tmp_path.glob("e_*"))


def test_principal_components_keep_feature_distances():
    """Full rank: the projection is a rotation (distances kept); features spanning two directions
    keep their distances with two components."""
    from regode.nir.fit import principal_components

    gen = torch.Generator().manual_seed(0)
    fixed = torch.randn(1, 5, 4, 5, 6, generator=gen, dtype=torch.float64)
    moving = fixed + 0.3 * torch.randn(fixed.shape, generator=gen, dtype=torch.float64)
    head = torch.ones(4, 5, 6, dtype=torch.bool)
    pf, pm = principal_components(fixed, moving, head, 5)
    assert torch.allclose((pf - pm).square().sum(1), (fixed - moving).square().sum(1))
    basis = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    low = lambda c: (basis @ c.reshape(2, -1)).reshape(1, 5, 4, 5, 6)  # noqa: E731
    f2, m2 = (
        low(torch.randn(2, 120, generator=gen, dtype=torch.float64)),
        low(torch.randn(2, 120, generator=gen, dtype=torch.float64)),
    )
    pf, pm = principal_components(f2, m2, head, 2)
    assert pf.shape == (1, 2, 4, 5, 6) and torch.allclose((pf - pm).square().sum(1), (f2 - m2).square().sum(1))


def test_masks_leave_what_they_exclude_out_of_the_fit(tmp_path):
    """A moving image that differs from the fixed one only in its left half: unmasked, the field
    moves there; with a fixed mask of the right half (ANTs' -x), nothing drives it there. The
    command line takes both masks, for fit-field and register, and records them."""
    grid = Grid((40, 44, 36), (3.0, 3.0, 3.0), (-60.0, -66.0, -54.0))
    fixed = render(phantom_labels(grid, 16, 5), grid, 1)
    shift = Rigid(torch.tensor([[0.0, 0.0, 0.0, 6.0, 0.0, 0.0]], dtype=torch.float64))
    moved = resample(fixed, grid, grid, shift)
    left = torch.zeros_like(fixed, dtype=torch.bool)
    left[..., : grid.size[0] // 2] = True  # x is the last tensor axis
    moving = torch.where(left, moved, fixed)
    mask = Image((~left).float(), grid, np.uint8)
    config = FitConfig(**FAST, metric="mse", spacing=3.0)  # the working grid is the image's
    free = fit_images(Image(fixed, grid, np.float32), Image(moving, grid, np.float32), config).field.field
    masked = fit_images(
        Image(fixed, grid, np.float32), Image(moving, grid, np.float32), config, masks=(mask, None)
    ).field.field
    inner = left.clone()
    inner[..., grid.size[0] // 2 - 4 :] = False  # away from the mask's edge
    size = lambda field: float(field[0].norm(dim=0)[inner[0, 0]].mean())  # noqa: E731
    assert size(free) > 1.0 and size(masked) < 0.4 * size(free), (size(free), size(masked))
    write_image(fixed, grid, tmp_path / "f.nii.gz")
    write_image(moving, grid, tmp_path / "m.nii.gz")
    write_image(mask.data, grid, tmp_path / "mask.nii.gz", np.uint8)
    for command in (
        ["fit-field", "--iterations", "3", "--coarse-iterations", "0", "-q"],
        ["register", "--model", "rigid"],
    ):
        result = runner.invoke(
            app,
            [
                *command,
                "-f",
                str(tmp_path / "f.nii.gz"),
                "-m",
                str(tmp_path / "m.nii.gz"),
                "-o",
                str(tmp_path / f"{command[0]}_"),
                "--fixed-mask",
                str(tmp_path / "mask.nii.gz"),
                "--moving-mask",
                str(tmp_path / "mask.nii.gz"),
            ],
        )
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / f"{command[0]}_regode.json").read_text())
        assert record["config"]["fixed_mask"] == str(tmp_path / "mask.nii.gz")


def test_the_inter_subject_preset_fills_what_the_options_leave():
    """``--preset inter-subject`` sets --affine --center-of-mass --lambda-grad 1 --lambda-fold 100
    --metric auto and the fine level only where no option gives them: an option equal to the
    default still wins over the preset, and each setting's source is recorded."""
    from regode.nir.config import PRESETS, SPEC
    from regode.options import resolve

    preset = resolve(SPEC, [("command line", {"fixed": "f", "moving": "m"})], "inter-subject")
    assert all(getattr(preset["config"], k) == v for k, v in PRESETS["inter-subject"].items())
    assert preset.sources["lambda_grad"] == "preset" and preset.sources["seed"] == "default"
    mine = resolve(
        SPEC, [("command line", {"fixed": "f", "moving": "m", "lambda_grad": 5.0, "metric": "mi"})], "inter-subject"
    )
    assert mine["config"].lambda_grad == 5.0 and mine["config"].metric == "mi" and mine["config"].affine
    assert mine.sources["lambda_grad"] == mine.sources["metric"] == "command line"
    assert resolve(SPEC, [("command line", {"fixed": "f", "moving": "m"})])["config"] == FitConfig()


@pytest.mark.parametrize("headers_off_mm", [0.0, 45.0])
def test_affine_stage_judges_the_headers_start(monkeypatch, headers_off_mm):
    """fit-field with ``affine`` and ``center_of_mass`` (the inter-subject preset's start) on a slab
    against a whole head in one world space: the affine stage also runs from the headers, and the
    better start is kept (the headers where they are right; the head centres where the slab's header
    is 45 mm off). Either way the fit is, to the bit, the one that started from the start kept."""
    import copy
    from dataclasses import replace

    from regode import alignment

    from .conftest import slab_pair

    fixed, moving, truth, grid = slab_pair(headers_off_mm, oblique_direction((0.2, -0.1, 0.3)))
    config = FitConfig(stride=2, iterations=20, coarse_iterations=20, affine=True, center_of_mass=True)
    points = (
        torch.as_tensor(grid.center)[None, None]
        + torch.randn(1, 300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 25
    )

    def error(result):
        mapped = copy.deepcopy(result.transform).double()(points)
        return float((mapped - truth(points)).norm(dim=-1).square().mean().sqrt())

    judged = fit_images(fixed, moving, config)
    choice = judged.stats["start_choice"]
    assert choice["gap_mm"] > alignment.START_GAP_MM
    assert choice["chosen"] == ("headers" if headers_off_mm == 0 else "head_centres"), choice
    monkeypatch.setattr(alignment, "START_GAP_MM", float("inf"))
    alone = fit_images(fixed, moving, config)
    assert "chosen" not in alone.stats["start_choice"]
    if headers_off_mm == 0:
        assert error(judged) < 6.0 and error(alone) > 1.8 * error(judged), (error(judged), error(alone))
        from_headers = fit_images(fixed, moving, replace(config, center_of_mass=False))  # as if it had started there
        assert torch.equal(judged.field.field, from_headers.field.field)
        assert torch.equal(judged.linear.homogeneous(), from_headers.linear.homogeneous())
    else:
        assert torch.equal(judged.field.field, alone.field.field)
        assert torch.equal(judged.linear.homogeneous(), alone.linear.homogeneous())
