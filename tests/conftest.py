"""Shared fixtures: deliberately awkward grids (oblique, anisotropic) and images on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regode.grid import Grid
from regode.rotations import euler_matrix
from regode.synthetic import phantom_labels, render


def oblique_direction(angles=(0.35, -0.25, 0.5)) -> tuple[float, ...]:
    return tuple(euler_matrix(torch.tensor(angles, dtype=torch.float64)).numpy().ravel())


@pytest.fixture
def awkward_grid() -> Grid:
    """Oblique direction, 0.9 x 1.1 x 2.5 mm, odd sizes, off-centre origin."""
    return Grid((41, 37, 17), (0.9, 1.1, 2.5), (-12.3, 20.7, 5.1), oblique_direction())


@pytest.fixture
def phantom(awkward_grid):
    """(intensity image [1,1,...] float32, labels [1,1,...] int32) on the awkward grid."""
    labels = phantom_labels(awkward_grid, 30, seed=3)
    return render(labels, awkward_grid, seed=3), labels


def random_world_points(grid: Grid, n: int, seed: int, margin: float = 1.0) -> np.ndarray:
    """``n`` random world points inside ``grid``, ``margin`` voxels away from its border."""
    rng = np.random.default_rng(seed)
    index = rng.uniform(margin, np.asarray(grid.size) - 1 - margin, size=(n, 3))
    return grid.index_to_world(index)
