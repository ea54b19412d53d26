"""Lattices: where a per-pair optimisation (regode.fitting) evaluates its mapping at one step.

Every sampler returns a :class:`Lattice`: batches of world points (LPS mm) on regular lattices in
the fixed image's orientation, so that windowed similarity (local NCC) and finite-difference
Jacobians can be computed on them. They lie in :func:`region_of` the fixed image's foreground.

- ``downsize``: one lattice ``stride`` times coarser than the working grid over the region,
  shifted by a random sub-step offset at every step (so, over the steps, every part is seen);
- ``patch``: ``count`` random cubes of ``size`` points at the working grid's spacing, placed
  anywhere in the region with a random sub-voxel offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .grid import Grid
from .preprocess import foreground


@dataclass
class Lattice:
    points: torch.Tensor
    """world points ``[B, d, h, w, 3]`` (mm)."""
    step: torch.Tensor
    """``[3, 3]``: columns are the world vectors (mm) of one lattice step along i, j, k."""
    grid: Grid | None = None
    """the lattice as a grid, when it is one (``B`` = 1): transforms may map it separably."""

    def to(self, device=None, dtype=None) -> Lattice:
        return Lattice(self.points.to(device=device, dtype=dtype), self.step.to(device=device, dtype=dtype), self.grid)


def region_of(volume: torch.Tensor, grid: Grid, margin: float) -> Grid:
    """The sub-grid of ``grid`` (same spacing and direction) bounding the foreground of the working
    image ``volume`` (``[1, 1, nz, ny, nx]``, in [0, 1]), grown by ``margin`` mm."""
    mask = foreground(volume[0, 0]).cpu().numpy()
    if not mask.any():
        return grid
    lo, hi = [], []
    for axis in range(3):  # tensor axes z, y, x
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo.append(hits[0])
        hi.append(hits[-1])
    lo_ijk, hi_ijk = np.asarray(lo[::-1]), np.asarray(hi[::-1])
    pad = np.ceil(margin / np.asarray(grid.spacing)).astype(int)
    lo_ijk = np.maximum(lo_ijk - pad, 0)
    hi_ijk = np.minimum(hi_ijk + pad, np.asarray(grid.size) - 1)
    return Grid(tuple(hi_ijk - lo_ijk + 1), grid.spacing, tuple(grid.index_to_world(lo_ijk)), grid.direction)


def lattice_step(grid: Grid, factor: float) -> torch.Tensor:
    """``[3, 3]``: the world vectors (columns, mm) of ``factor`` voxel steps of ``grid`` along i, j, k."""
    return torch.as_tensor(grid.direction_matrix * np.asarray(grid.spacing)[None, :] * factor, dtype=torch.float32)


def downsize_grid(region: Grid, stride: int, generator: torch.Generator) -> Grid:
    """Every ``stride``-th point of ``region`` along each axis, all shifted by one random offset
    of up to one lattice step, as a grid (same direction as ``region``)."""
    # at least 2 points along every axis the region spans, so finite differences exist
    size = np.maximum(np.minimum(2, region.size), (np.asarray(region.size) - 1) // stride + 1)
    offset = torch.rand(3, generator=generator, dtype=torch.float64).numpy() * np.minimum(stride, region.size)
    origin = region.index_to_world(offset - 0.5 * (np.minimum(stride, region.size) - 1))
    return Grid(tuple(size), tuple(s * stride for s in region.spacing), tuple(origin), region.direction)


def downsize(region: Grid, stride: int, generator: torch.Generator) -> Lattice:
    """The points of :func:`downsize_grid`."""
    grid = downsize_grid(region, stride, generator)
    return Lattice(grid.world_points(torch.float32)[None], lattice_step(region, stride), grid)


def patches(region: Grid, size: int, count: int, generator: torch.Generator) -> Lattice:
    """``count`` cubes of ``size``^3 points at the region's spacing, at random places inside it."""
    extent = np.asarray(region.size, dtype=float)
    n = np.minimum(size, region.size)
    room = np.maximum(extent - n, 0)
    starts = torch.rand(count, 3, generator=generator, dtype=torch.float64).numpy() * room
    base = Grid(tuple(n), region.spacing, region.origin, region.direction).world_points(torch.float32)
    corner = torch.as_tensor(region.index_to_world(starts) - np.asarray(region.origin), dtype=torch.float32)
    return Lattice(base[None] + corner[:, None, None, None, :], lattice_step(region, 1))
