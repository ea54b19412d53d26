"""Principal-axes alignment (regode.alignment): the start of rigid registration."""

from __future__ import annotations

import numpy as np
import torch

from regode.alignment import candidates, head_mask, moments, principal_axes
from regode.grid import Grid
from regode.odenet.preprocess import normalise
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine, euler_matrix
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


def test_moments_follow_a_rotation():
    """The principal axes of a rotated head are the rotated axes (up to sign)."""
    fixed, moving, truth = _pair([0.0, 0.0, 90.0], [0.0, 0.0, 0.0])
    _, var_f, axes_f = moments(fixed, GRID)
    _, var_m, axes_m = moments(moving, GRID)
    assert np.allclose(var_f, var_m, rtol=0.05)
    rotated = truth.matrix[0].numpy().T @ axes_m  # moving axes carried back to the fixed frame
    assert np.abs(np.abs((rotated * axes_f).sum(0)) - 1).max() < 0.02


def test_candidates_hold_the_truth_and_the_centre_of_mass_shift():
    fixed, moving, truth = _pair([40.0, -120.0, 30.0], [6.0, -4.0, 8.0])
    maps = candidates(moments(fixed, GRID), moments(moving, GRID))
    assert len(maps) == 5 and np.allclose(maps[0].matrix[0].numpy(), np.eye(3))
    errors = [_error_mm(m, truth) for m in maps]
    assert min(errors[1:]) < 4.0 and sorted(errors)[1] > 20.0  # one rotation fits, the others are far off


def test_principal_axes_recovers_a_large_rotation_across_contrasts():
    fixed, moving, truth = _pair([40.0, -120.0, 30.0], [6.0, -4.0, 8.0])
    found, info = principal_axes(fixed, GRID, moving, GRID)
    assert info["chosen"] != 0 and _error_mm(found, truth) < 4.0
    assert info["candidate_mi"][info["chosen"]] == max(info["candidate_mi"])


def test_principal_axes_keeps_an_unrotated_pair():
    """No rotation: the chosen start is within a few mm of the truth (a pure shift)."""
    fixed, moving, truth = _pair([0.0, 0.0, 0.0], [5.0, 3.0, -4.0])
    found, _ = principal_axes(fixed, GRID, moving, GRID)
    assert _error_mm(found, truth) < 3.0


def test_a_round_head_keeps_the_centre_of_mass_start():
    """A head as wide as it is long has no principal axes to trust: only the centre-of-mass
    translation is tried, whatever the rotation."""
    grid = Grid((48, 48, 48), (3.0, 3.0, 3.0), (-70.5, -70.5, -70.5))
    labels = phantom_labels(grid, 12, 4)  # radii 54, 54, 54 mm: a ball
    fixed = normalise(render(labels, grid, 1).float())
    moving = normalise(render(labels, grid, 2).float())
    found, info = principal_axes(fixed, grid, moving, grid)
    assert len(info["candidate_mi"]) == 1 and min(info["variance_ratios"]) < 1.1
    assert np.allclose(found.matrix[0].numpy(), np.eye(3))
