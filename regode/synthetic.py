"""Synthetic brain-like volumes and smooth deformations for tests, demos and training data.

Everything here is seeded: the same seed gives the same volume on every machine.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import Grid
from .transforms import BSpline


def phantom_labels(grid: Grid, n_labels: int = 30, seed: int = 0, relax: int = 5) -> torch.Tensor:
    """An integer label map ``[1, 1, nz, ny, nx]``: 0 outside a head-sized ellipsoid centred on the
    grid, labels 1..n_labels-1 as Voronoi cells of random points inside it (world mm), made
    compact by ``relax`` Lloyd iterations."""
    rng = np.random.default_rng(seed)
    points = grid.world_points(dtype=torch.float64)
    extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing)
    radii = torch.as_tensor(np.minimum(extent * 0.38, [70.0, 85.0, 65.0]))
    # ellipsoid axes along the grid's own axes, so any orientation of the grid holds the phantom
    local = (points - torch.as_tensor(grid.center)) @ torch.as_tensor(grid.direction_matrix)
    inside = ((local / radii) ** 2).sum(-1) <= 1
    seeds = torch.as_tensor(rng.uniform(-0.8, 0.8, size=(n_labels - 1, 3)) * radii.numpy())
    brain = local[inside]
    for _ in range(relax):  # Lloyd relaxation: compact cells of similar size, like brain structures
        owner = torch.cdist(brain, seeds).argmin(dim=1)
        counts = torch.bincount(owner, minlength=len(seeds)).clamp(min=1)[:, None]
        sums = torch.zeros_like(seeds).index_add_(0, owner, brain)
        seeds = torch.where(counts > 1, sums / counts, seeds)
    flat = local.reshape(-1, 3)  # nearest seed in chunks: a 1 mm head grid has millions of voxels
    cells = torch.cat([torch.cdist(part, seeds).argmin(dim=1) for part in flat.split(1 << 20)]).reshape(grid.shape) + 1
    labels = torch.where(inside, cells, torch.zeros_like(cells))
    return labels[None, None].to(torch.int32)


def smooth_noise(grid: Grid, control_spacing: float, amplitude: float, seed: int) -> torch.Tensor:
    """A smooth random 3-vector field ``[1, 3, nz, ny, nx]`` (float64): the cubic B-spline of
    N(0, amplitude^2) values on a ``control_spacing`` mm control grid."""
    return random_bspline(grid, control_spacing, amplitude, seed).displacement(grid)


def random_bspline(grid: Grid, control_spacing: float, sigma: float, seed: int) -> BSpline:
    """A B-spline transform with control displacements N(0, sigma^2) mm on each axis."""
    control = BSpline.control_grid_for(grid, control_spacing)
    gen = torch.Generator().manual_seed(seed)
    return BSpline(control, torch.randn(1, 3, *control.shape, generator=gen, dtype=torch.float64) * sigma)


def render(labels: torch.Tensor, grid: Grid, seed: int = 0, noise: float = 0.02, bias: float = 0.15) -> torch.Tensor:
    """A contrast of a label map: random intensity per label in [0.1, 1] (background 0), a smooth
    multiplicative bias field and Gaussian noise; float32 ``[1, 1, nz, ny, nx]``."""
    rng = np.random.default_rng(seed)
    n = int(labels.max()) + 1
    means = torch.as_tensor(np.concatenate([[0.0], rng.uniform(0.1, 1.0, n - 1)]))
    image = means[labels.long()]
    field = smooth_noise(grid, 60.0, bias, seed + 1)[:, :1]
    gen = torch.Generator().manual_seed(seed + 2)
    image = image * torch.exp(field) + noise * torch.randn(image.shape, generator=gen, dtype=torch.float64)
    return (image * (labels > 0)).to(torch.float32)
