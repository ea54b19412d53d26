"""Principal-axes alignment (regode.alignment): the start of rigid registration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regode.alignment import candidates, principal_axes
from regode.grid import Grid
from regode.preprocess import center_of_mass, head_mask, moments, normalise
from regode.rotations import euler_matrix
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine
from regode.warp import resample

OBLIQUE = tuple(euler_matrix(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)).numpy().ravel())
GRID = Grid((56, 64, 52), (3.0, 3.0, 3.0), (-80.0, -95.0, -75.0), OBLIQUE)


def _pair(angles_deg, shift):
    """Two contrasts of one phantom head; the moving one is moved by ``truth`` (fixed -> moving)."""
    labels = phantom_labels(GRID, 12, 4)
    rotation = euler_matrix(torch.as_tensor(np.deg2rad(angles_deg), dtype=torch.float64))
    truth = _about_center(rotation, torch.tensor(shift, dtype=torch.float64))
    fixed = normalise(render(labels, GRID, 1).float())
    moving = normalise(resample(render(labels, GRID, 2), GRID, GRID, truth.inverse()).float())
    return fixed, moving, truth


def _about_center(rotation, shift):
    c = torch.as_tensor(GRID.center, dtype=torch.float64)
    return Affine(rotation, shift[None], c[None])


def _centres_of_mass(fixed, fixed_grid, moving, moving_grid) -> Affine:
    c_f, c_m = center_of_mass(fixed, fixed_grid).double(), center_of_mass(moving, moving_grid).double()
    return Affine(torch.eye(3, dtype=torch.float64), (c_m - c_f)[None])


def _error_mm(found, truth) -> float:
    """RMS distance between the two maps over points of the head (mm)."""
    gen = torch.Generator().manual_seed(0)
    pts = torch.as_tensor(GRID.center)[None, None] + torch.randn(1, 500, 3, generator=gen, dtype=torch.float64) * 30
    return float((found.double()(pts) - truth(pts)).norm(dim=-1).square().mean().sqrt())


def test_head_mask_keeps_dark_tissue_inside():
    """A bright shell around a dark core (CSF-like) on a faint noisy background: the mask is the
    whole head, core included, and no background."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :40, :40] - 19.5
    r = np.sqrt(x**2 + y**2 + z**2)
    volume = np.where(r < 15, 0.8, 0.0) + np.where(r < 6, -0.75, 0.0) + rng.uniform(0, 0.04, r.shape)
    mask = head_mask(volume)
    assert mask[r < 14].all() and not mask[r > 16].any()


def test_head_mask_fills_the_holes_binary_fill_holes_fills():
    """The holes are the background that does not reach the border through faces, as SciPy's
    binary_fill_holes finds them: equal masks on blobby volumes with holes and with open pockets."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for _ in range(20):
        volume = ndimage.gaussian_filter(rng.random((24, 20, 16)), 1.2)
        low, high = np.percentile(volume, [2, 98])
        expected = ndimage.binary_fill_holes(volume > low + 0.1 * (high - low))
        assert np.array_equal(head_mask(volume), expected)


def test_moments_follow_a_rotation():
    """The principal axes of a rotated head are the rotated axes (up to sign)."""
    fixed, moving, truth = _pair([0.0, 0.0, 90.0], [0.0, 0.0, 0.0])
    _, var_f, axes_f = moments(fixed, GRID)
    _, var_m, axes_m = moments(moving, GRID)
    assert np.allclose(var_f, var_m, rtol=0.05)
    rotated = truth.matrix[0].numpy().T @ axes_m  # moving axes carried back to the fixed frame
    assert np.abs(np.abs((rotated * axes_f).sum(0)) - 1).max() < 0.02


def test_moments_are_those_of_the_head_voxels_in_world_mm():
    """The centre and covariance from the mask's sums over axes equal those of the list of its
    voxels' world points, on an oblique grid of unequal spacings."""
    grid = Grid((30, 26, 22), (1.5, 2.0, 3.0), (-20.0, 10.0, -30.0), OBLIQUE)
    fixed, _, _ = _pair([10.0, 20.0, 30.0], [0.0, 0.0, 0.0])
    volume = fixed[..., :22, :26, :30]
    centre, variances, axes = moments(volume, grid)
    points = grid.index_to_world(np.argwhere(head_mask(volume[0, 0].double().numpy()))[:, ::-1].astype(float))
    assert np.allclose(centre, points.mean(0), atol=1e-9)
    assert np.allclose(axes @ np.diag(variances) @ axes.T, np.cov(points.T), rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(variances) > 0)


def test_candidates_hold_the_truth_and_the_centre_of_mass_shift():
    fixed, moving, truth = _pair([40.0, -120.0, 30.0], [6.0, -4.0, 8.0])
    maps = candidates(moments(fixed, GRID), moments(moving, GRID))
    assert len(maps) == 4 and all(abs(float(torch.det(m.matrix[0])) - 1) < 1e-9 for m in maps)
    errors = sorted(_error_mm(m, truth) for m in maps)
    assert errors[0] < 4.0 and errors[1] > 20.0  # one rotation fits, the others are far off


def test_principal_axes_recovers_a_large_rotation_across_contrasts():
    fixed, moving, truth = _pair([40.0, -120.0, 30.0], [6.0, -4.0, 8.0])
    found, info = principal_axes(fixed, GRID, moving, GRID, _centres_of_mass(fixed, GRID, moving, GRID))
    assert info["chosen"] != 0 and _error_mm(found, truth) < 4.0
    assert info["candidate_mi"][info["chosen"]] == max(info["candidate_mi"])


def test_principal_axes_keeps_an_unrotated_pair():
    """No rotation: the start found is (nearly) unrotated and within a few mm of the pure shift."""
    fixed, moving, truth = _pair([0.0, 0.0, 0.0], [5.0, 3.0, -4.0])
    found, _ = principal_axes(fixed, GRID, moving, GRID, _centres_of_mass(fixed, GRID, moving, GRID))
    angle = np.degrees(np.arccos(np.clip((float(torch.trace(found.matrix[0])) - 1) / 2, -1, 1)))
    assert angle < 6.0 and _error_mm(found, truth) < 4.0


def test_a_round_head_keeps_the_centre_of_mass_start():
    """A head as wide as it is long has no principal axes to trust: only the centre-of-mass
    translation is tried, whatever the rotation."""
    grid = Grid((48, 48, 48), (3.0, 3.0, 3.0), (-70.5, -70.5, -70.5))
    labels = phantom_labels(grid, 12, 4)  # radii 54, 54, 54 mm: a ball
    fixed = normalise(render(labels, grid, 1).float())
    moving = normalise(render(labels, grid, 2).float())
    start = _centres_of_mass(fixed, grid, moving, grid)
    found, info = principal_axes(fixed, grid, moving, grid, start)
    assert info["candidate_mi"] == [] and min(info["variance_ratios"]) < 1.1 and "skipped" in info
    assert torch.equal(found.matrix, start.matrix) and torch.equal(found.translation, start.translation)


def test_no_head_keeps_the_start():
    """An image with almost nothing above background gives no axes, not an exception."""
    empty = torch.zeros(1, 1, 20, 20, 20)
    empty[0, 0, 10, 10, 10] = 1.0
    start = Affine(torch.eye(3, dtype=torch.float64), torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    grid = Grid((20, 20, 20), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    found, info = principal_axes(empty, grid, empty, grid, start)
    assert found.translation.tolist() == [[1.0, 2.0, 3.0]] and "foreground" in info["skipped"]


def test_principal_axes_across_grids():
    """The moving image on another oblique, anisotropic grid: the alignment is in world mm."""
    fixed, _, _ = _pair([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    rotation = euler_matrix(torch.as_tensor(np.deg2rad([30.0, -100.0, 20.0]), dtype=torch.float64))
    truth = Affine(rotation, torch.tensor([[4.0, -6.0, 3.0]], dtype=torch.float64), torch.as_tensor(GRID.center)[None])
    direction = euler_matrix(torch.tensor([-0.3, 0.1, 0.5], dtype=torch.float64)).numpy()
    size, spacing = np.array([70, 60, 72]), np.array([2.5, 3.2, 2.7])
    origin = GRID.center - direction @ (spacing * (size - 1) / 2)  # centred on the head
    other = Grid(tuple(size.tolist()), tuple(spacing), tuple(origin), tuple(direction.ravel()))
    labels = phantom_labels(GRID, 12, 4)
    moving = normalise(resample(render(labels, GRID, 2), GRID, other, truth.inverse()).float())
    found, info = principal_axes(fixed, GRID, moving, other, _centres_of_mass(fixed, GRID, moving, other))
    assert info["chosen"] != 0 and _error_mm(found, truth) < 4.0


def test_head_centres_of_two_contrasts_agree():
    """The start of every registration: the head-mask centres of two contrasts of one head agree to
    a fraction of a voxel, where intensity-weighted centres of mass differ by millimetres."""
    from regode.preprocess import head_center

    fixed, moving, _ = _pair([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    heads = float((head_center(fixed, GRID) - head_center(moving, GRID)).norm())
    weighted = float((center_of_mass(fixed, GRID) - center_of_mass(moving, GRID)).norm())
    assert heads < 1.0 and weighted > 2 * heads


# ------------------------------------------------------------------------ the rigid polish
def _polish(fixed, moving, start, seed=0, grid=GRID):
    from regode.odenet.model import pyramid
    from regode.odenet.polish import polish_rigid

    return polish_rigid(
        pyramid(fixed, grid, 2), pyramid(moving, grid, 2), start, torch.as_tensor(grid.center), seed=seed
    )


def test_polish_lands_on_the_truth_across_contrasts():
    """From a start 7° and several mm off (the principal axes' typical miss), the mutual-information
    polish composes a correction onto the start that reaches the truth to a fraction of a voxel."""
    fixed, moving, truth = _pair([5.0, -4.0, 7.0], [6.0, -4.0, 5.0])
    start = _centres_of_mass(fixed, GRID, moving, GRID)
    found, record = _polish(fixed, moving, start)
    assert _error_mm(start, truth) > 8.0 and _error_mm(found, truth) < 1.0
    assert (
        record["iterations"] == 60
        and record["stages"][-1]["history"][-1]["similarity"] < record["stages"][0]["history"][0]["similarity"]
    )
    assert abs(float(torch.det(found.matrix[0])) - 1) < 1e-9  # still rigid


def test_polish_is_reproducible_for_a_seed():
    fixed, moving, _ = _pair([3.0, 0.0, -4.0], [2.0, 3.0, 0.0])
    start = _centres_of_mass(fixed, GRID, moving, GRID)
    a, b, c = (_polish(fixed, moving, start, seed)[0] for seed in (0, 0, 1))
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.translation, b.translation)
    assert not torch.equal(a.translation, c.translation)  # the seed drives the lattices' offsets


def test_polish_needs_the_coarse_level():
    from regode.odenet.model import pyramid
    from regode.odenet.polish import polish_rigid

    fixed, moving, _ = _pair([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    start = _centres_of_mass(fixed, GRID, moving, GRID)
    with pytest.raises(ValueError, match="pyramids have 1 levels"):
        polish_rigid(pyramid(fixed, GRID, 1), pyramid(moving, GRID, 1), start, torch.as_tensor(GRID.center))


def test_bspline_polish_undoes_a_deformation_across_contrasts():
    """A smooth deformation (40 mm control spacing, 8 mm per axis) between two contrasts: from zero
    control displacements the B-spline polish recovers a good part of it, without folding."""
    from regode.odenet.model import pyramid
    from regode.odenet.polish import polish_bspline
    from regode.synthetic import random_bspline
    from regode.transforms import BSpline

    labels = phantom_labels(GRID, 12, 4)
    truth = random_bspline(GRID, 40.0, 8.0, seed=3)
    fixed = normalise(render(labels, GRID, 1).float())
    moving = normalise(
        resample(render(labels, GRID, 2), GRID, GRID, truth.inverse(GRID)).float()
    )  # fixed -> moving is truth
    identity = Affine(torch.eye(3, dtype=torch.float64))
    control = BSpline.control_grid_for(GRID, 20.0)
    start = BSpline(control, torch.zeros(1, 3, *control.shape, dtype=torch.float64))
    found, record = polish_bspline(pyramid(fixed, GRID, 2), pyramid(moving, GRID, 2), identity, start)
    head = fixed[0, 0].numpy() > 0.1

    def error(t):
        return float(np.sqrt(((t.displacement(GRID) - truth.displacement(GRID))[0].numpy() ** 2).sum(0)[head].mean()))  # noqa: E731

    assert error(found) < 0.75 * error(start)  # 3.8 -> 2.7 mm; flat label interiors do not show motion
    points = GRID.world_points(torch.float64)[None]
    from regode.lattice import lattice_step
    from regode.losses import lattice_jacobian

    det = torch.linalg.det(lattice_jacobian(found(points), lattice_step(GRID, 1).double()))
    assert (
        float(det.min()) > 0 and record["iterations"] == 30 and record["step_mm"] == 0.4
    )  # the bspline kind's polish schedule


def test_dense_polish_corrects_a_displacement_field():
    """The dense polish adds a smooth correction to the network's field: from half the true
    deformation it gets closer to the truth, and from the truth it stays there (the field it is
    given is kept, not replaced)."""
    from regode.odenet.model import pyramid
    from regode.odenet.polish import polish_dense
    from regode.synthetic import random_bspline
    from regode.transforms import DisplacementField

    labels = phantom_labels(GRID, 12, 4)
    truth = random_bspline(GRID, 40.0, 8.0, seed=3)
    fixed = normalise(render(labels, GRID, 1).float())
    moving = normalise(resample(render(labels, GRID, 2), GRID, GRID, truth.inverse(GRID)).float())
    identity = Affine(torch.eye(3, dtype=torch.float64))
    true_field = truth.displacement(GRID)
    head = fixed[0, 0].numpy() > 0.1
    error = lambda t: float(np.sqrt(((t.displacement(GRID) - true_field)[0].numpy() ** 2).sum(0)[head].mean()))  # noqa: E731
    images = pyramid(fixed, GRID, 2), pyramid(moving, GRID, 2)
    half = DisplacementField(GRID, 0.5 * true_field)
    found, record = polish_dense(*images, identity, half)
    assert isinstance(found, DisplacementField) and found.grid.same_as(GRID)
    assert (
        error(found) < 0.8 * error(half)
        and record["stages"][0]["history"][-1]["similarity"] < record["stages"][0]["history"][0]["similarity"]
    )
    kept, _ = polish_dense(*images, identity, DisplacementField(GRID, true_field.clone()))
    assert error(kept) < 1.0  # from zero the same polish ends near 3 mm


def test_header_start_only_where_the_starts_differ_and_the_headers_overlap():
    """The headers' start is offered beside the head centres' only where the two put the fixed head's
    centre more than START_GAP_MM apart, and only where the headers' own alignment overlaps the heads."""
    from regode.alignment import START_GAP_MM, header_start

    fixed, moving, _ = _pair([0, 0, 0], [0.0, 0.0, 0.0])
    c_fix = torch.as_tensor(GRID.center, dtype=torch.float64)

    def start(shift):
        return Affine(torch.eye(3, dtype=torch.float64), torch.tensor([shift], dtype=torch.float64))

    near, record = header_start(fixed, GRID, moving, GRID, start([10.0, 0.0, 0.0]), c_fix)
    assert near is None and record["gap_mm"] == pytest.approx(10.0)
    far, record = header_start(fixed, GRID, moving, GRID, start([0.0, START_GAP_MM + 5, 0.0]), c_fix)
    assert far is not None and torch.allclose(far.homogeneous(), torch.eye(4, dtype=torch.float64)[None])
    assert record["header_overlap"] > 0.9
    away = Grid(GRID.size, GRID.spacing, tuple(np.asarray(GRID.origin) + 400.0), GRID.direction)
    none, record = header_start(fixed, GRID, moving, away, start([0.0, START_GAP_MM + 5, 0.0]), c_fix)
    assert none is None and record["header_overlap"] < 0.05
