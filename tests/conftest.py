"""Shared fixtures: deliberately awkward grids (oblique, anisotropic) and images on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regode.grid import Grid
from regode.io import Image
from regode.rotations import euler_matrix
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine, Compose
from regode.warp import resample


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


def slab_pair(shift_headers_mm: float, direction: tuple):
    """A phantom head (fixed) and a slab of it (moving: the top slices only, as a FLAIR without the
    neck against a whole head), in one world space up to a small known shift, and the moving
    header moved by ``shift_headers_mm`` along x besides (0: the headers are right). Returns the two
    images, the fixed -> moving truth and the fixed grid."""
    grid = Grid((72, 80, 84), (2.0, 2.0, 2.0), (-70.0, -80.0, -90.0), direction)
    labels = phantom_labels(grid, 12, 5)
    truth = Affine(torch.eye(3, dtype=torch.float64)[None], torch.tensor([[2.0, -3.0, 1.5]], dtype=torch.float64))
    slab = grid.rows(slice(50, 84))
    moving = resample(render(labels, grid, 2), grid, slab, truth.inverse())
    origin = np.asarray(slab.origin) + np.array([shift_headers_mm, 0.0, 0.0])
    moved = Grid(slab.size, slab.spacing, tuple(origin), slab.direction)
    header = Affine(
        torch.eye(3, dtype=torch.float64)[None], torch.tensor([[shift_headers_mm, 0.0, 0.0]], dtype=torch.float64)
    )
    return (
        Image(render(labels, grid, 1).float(), grid, np.dtype(np.float32)),
        Image(moving.float(), moved, np.dtype(np.float32)),
        Compose([header, truth]),
        grid,
    )
