"""Resampling an image through a chain of transforms (the engine of ``regode warp``)."""

from __future__ import annotations

import functools

import torch

from .config import INTERPOLATIONS
from .grid import Grid
from .sampling import sample, sample_bspline, sample_labels, uniform_cells
from .transforms import Compose, Transform


def _linear(volume, grid, points, padding):
    return sample(volume, grid, points, "linear", padding)


def _nearest(volume, grid, points, padding):
    return sample(volume, grid, points, "nearest", padding)


INTERPOLATORS = dict(zip(INTERPOLATIONS, (_linear, _nearest, sample_labels, sample_bspline), strict=False))
"""Interpolator name -> ``f(volume, grid, points, padding)``; ANTs' Linear, NearestNeighbor,
GenericLabel and BSpline."""


def _fold_last_linear(transform: Transform, grid: Grid) -> tuple[Transform, Grid]:
    """Fold the linear transform applied last to points into the moving grid, saving one pass
    over every output point (``-t 1Warp -t 0GenericAffine.mat`` ends with the affine)."""
    parts = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    if not parts or not parts[0].is_linear:
        return transform, grid
    last = parts[0].as_affine() if isinstance(parts[0], Compose) else parts[0]
    if last.matrix.shape[0] != 1:
        return transform, grid
    return Compose(parts[1:]), grid.pulled_back(last.homogeneous()[0].detach().double().cpu().numpy())


@torch.no_grad()
def resample(
    volume: torch.Tensor,
    grid: Grid,
    reference: Grid,
    transform: Transform,
    interp: str = "linear",
    padding: float = 0.0,
    slab_voxels: int = 1 << 20,
) -> torch.Tensor:
    """Resample ``volume [1, C, nz, ny, nx]`` (on ``grid``) onto ``reference``: each reference voxel
    centre x takes the value of the volume at ``transform(x)``. Works through slabs of reference
    slices to bound memory; B-spline interpolation runs in one pass (its prefilter is global)."""
    return resample_many([(volume, interp)], grid, reference, transform, padding, slab_voxels)[0]


@torch.no_grad()
def resample_many(
    volumes: list, grid: Grid, reference: Grid, transform: Transform, padding: float = 0.0, slab_voxels: int = 1 << 20
) -> list[torch.Tensor]:
    """:func:`resample` of several ``(volume, interp)`` pairs on the same ``grid`` (an image and its
    labels) through one transform: the mapped points are computed once per slab for all of them."""
    samplers = []
    for volume, interp in volumes:
        sampler = INTERPOLATORS[interp]
        if interp == "label":  # which cells need a vote: once for all slabs
            sampler = functools.partial(sample_labels, cells=uniform_cells(volume))
        samplers.append(sampler)
    whole = any(interp == "bspline" for _, interp in volumes)
    dtype = torch.float64 if whole else torch.float32
    transform, grid = _fold_last_linear(transform, grid)
    transform = transform.to(dtype)
    nz, ny, nx = reference.shape
    step = nz if whole else max(1, slab_voxels // (ny * nx))
    # labels and nearest neighbours keep their volume's precision (exact wide labels in float64)
    outs = [
        torch.empty(
            1, volume.shape[1], nz, ny, nx, dtype=volume.dtype if interp in ("label", "nearest") else torch.float32
        )
        for volume, interp in volumes
    ]
    for k in range(0, nz, step):
        moved = transform.map_grid(reference, slice(k, k + step), dtype)
        for out, (volume, _), sampler in zip(outs, volumes, samplers, strict=False):
            out[:, :, k : k + step] = sampler(volume, grid, moved, padding).to(out.dtype)
    return outs
