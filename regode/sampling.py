"""Sampling a volume at world points: the only place regode calls ``grid_sample``.

All functions take a volume tensor ``[B, C, nz, ny, nx]`` on a :class:`~regode.grid.Grid`
and world points ``[B, *S, 3]`` (LPS mm, (x, y, z) last) and return ``[B, C, *S]``.
Border handling follows ITK's resampler: a point inside the image's buffer
(continuous index within [-0.5, n - 0.5] on every axis) is interpolated with the
border replicated, a point further out gets ``padding``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .grid import Grid


@functools.lru_cache(maxsize=256)
def _world_to_normalised(
    grid: Grid, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(matrix, offset, buffer limit) of ``grid``'s world -> normalised map, cached: optimisation
    loops sample the same grids thousands of times."""
    m = torch.as_tensor(grid.matrix("world", "normalised"), dtype=dtype, device=device)
    # half a voxel past the first / last voxel centre, in normalised units: (n / 2) / ((n - 1) / 2),
    # and half a voxel either side of a single voxel's centre (at 0, one normalised unit a voxel)
    size = np.asarray(grid.size, dtype=float)
    limit = torch.as_tensor(size / np.maximum(size - 1, 1), dtype=dtype, device=device)
    return m[:3, :3].T.contiguous(), m[:3, 3].contiguous(), limit


def _to_normalised(grid: Grid, points: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates of world points."""
    matrix, offset, _ = _world_to_normalised(grid, points.dtype, str(points.device))
    return torch.addmm(offset, points.reshape(-1, 3), matrix).reshape(points.shape)


def _to_index(grid: Grid, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous indices ``[B, N, 3]`` (float64) of world points and the mask ``[B, N]`` of those
    inside the buffer (within [-0.5, n - 0.5] on every axis)."""
    m = torch.as_tensor(grid.matrix("world", "index"), dtype=torch.float64, device=points.device)
    index = points.reshape(points.shape[0], -1, 3).to(torch.float64) @ m[:3, :3].T + m[:3, 3]
    size = torch.as_tensor(grid.size, device=points.device)
    return index, ((index >= -0.5) & (index <= size - 0.5)).all(-1)


def sample(
    volume: torch.Tensor, grid: Grid, points: torch.Tensor, mode: str = "linear", padding: float | None = 0.0
) -> torch.Tensor:
    """Interpolate ``volume`` (on ``grid``) at world ``points``; ``mode`` is "linear" or "nearest".
    ``padding=None`` replicates the border everywhere (no outside test, faster).

    Differentiable with respect to the volume and the points (linear mode).
    """
    return sample_normalised(volume, grid, _to_normalised(grid, points), mode, padding)


def normalised_map(grid: Grid, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The 4x4 world -> normalised matrix of ``grid`` (the coordinates of :func:`sample_normalised`)."""
    return torch.as_tensor(grid.matrix("world", "normalised"), dtype=dtype, device=device)


def sample_normalised(
    volume: torch.Tensor, grid: Grid, coords: torch.Tensor, mode: str = "linear", padding: float | None = 0.0
) -> torch.Tensor:
    """:func:`sample` at points given as ``grid``'s normalised coordinates ``[B, *S, 3]`` (world
    points through :func:`normalised_map`): a caller that builds them directly skips the world
    points."""
    if mode not in ("linear", "nearest"):
        raise ValueError(f"sample() supports linear and nearest, not {mode!r}")
    batch = max(volume.shape[0], coords.shape[0])
    spatial = coords.shape[1:-1]
    flat = coords.reshape(coords.shape[0], 1, 1, -1, 3).to(volume.dtype).expand(batch, -1, -1, -1, -1)
    # grid_sample reads the last coordinate axis as (x, y, z) = (i, j, k), i.e. the reverse of the
    # tensor's (D, H, W) dimensions; regode's coordinates are already in that order.
    values = F.grid_sample(
        volume.expand(batch, -1, -1, -1, -1),
        flat,
        mode="bilinear" if mode == "linear" else "nearest",
        padding_mode="border",
        align_corners=True,
    )
    values = values.reshape(batch, volume.shape[1], *spatial)
    if padding is None:
        return values
    limit = _world_to_normalised(grid, coords.dtype, str(coords.device))[2]
    inside = (coords.abs() <= limit).all(dim=-1).reshape(coords.shape[0], 1, *spatial)
    return torch.where(inside, values, torch.as_tensor(padding, dtype=values.dtype, device=values.device))


def _lerp_along(values: torch.Tensor, dim: int, position: torch.Tensor) -> torch.Tensor:
    """``values`` linearly interpolated along dimension ``dim`` at the (float64) index
    ``position`` of each output slice, positions outside clamped to the border."""
    n = values.shape[dim]
    position = position.clamp(0, n - 1)
    low = position.floor().clamp(max=max(n - 2, 0))
    weight = (position - low).to(values.dtype).reshape([-1 if d == dim else 1 for d in range(values.dim())])
    low = low.long()
    a = values.index_select(dim, low)
    b = values.index_select(dim, (low + 1).clamp(max=n - 1))
    return torch.lerp(a, b, weight)


def sample_on_grid(volume: torch.Tensor, grid: Grid, target: Grid, padding: float | None = 0.0) -> torch.Tensor:
    """``volume`` (on ``grid``) linearly interpolated at every voxel centre of ``target``:
    ``[B, C, *target.shape]``, as :func:`sample` at ``target.world_points()`` (``padding=None``:
    border values continue outside). When the two grids' axes are parallel (a field up-sampled to
    the fixed image's grid) trilinear interpolation is three one-dimensional ones, one axis after
    the other, without a world point per voxel: several times faster than ``grid_sample``."""
    if not target.parallel_to(grid):
        points = target.world_points(dtype=volume.dtype, device=volume.device)[None]
        return sample(volume, grid, points, padding=padding).reshape(volume.shape[0], volume.shape[1], *target.shape)
    # target voxel index -> grid voxel index: diagonal, one scale and shift per axis
    m = grid.matrix("world", "index") @ target.matrix("index", "world")
    values, inside = volume, [None] * 3
    # (i, j, k): x, y, z, i.e. tensor dimensions 4, 3, 2. Interpolating along x gathers strided
    # columns, the slow one: first when the volume grows (up-sampling), last when it shrinks (a
    # coarse lattice)
    shrinks = target.size[1] * target.size[2] < grid.size[1] * grid.size[2]
    for axis in (2, 1, 0) if shrinks else (0, 1, 2):
        n = target.size[axis]
        index = torch.as_tensor(m[axis, axis] * np.arange(n) + m[axis, 3], dtype=torch.float64, device=volume.device)
        inside[axis] = (index >= -0.5) & (index <= grid.size[axis] - 0.5)  # half a voxel past the end centres
        values = _lerp_along(values, 4 - axis, index)  # an axis of one voxel reads it anywhere
    if padding is None or all(bool(i.all()) for i in inside):
        return values
    mask = inside[2][:, None, None] & inside[1][None, :, None] & inside[0][None, None, :]
    return torch.where(mask, values, torch.as_tensor(padding, dtype=values.dtype, device=values.device))


def sample_labels(
    volume: torch.Tensor, grid: Grid, points: torch.Tensor, padding: float = 0.0, cells: torch.Tensor | None = None
) -> torch.Tensor:
    """Label-preserving interpolation (ITK/ANTs GenericLabel with a linear kernel).

    Every label among the 8 voxels around a point gets the sum of the trilinear weights of the
    voxels that carry it, and the point takes the label with the largest sum: the result is
    always one of the neighbouring labels (no invented values) and thin structures do not break
    up as under nearest-neighbour sampling. ``volume [B, 1, nz, ny, nx]`` holds label values;
    ``cells``: its :func:`uniform_cells`, if already known (a caller sampling it slab by slab).
    """
    if volume.shape[1] != 1:
        raise ValueError("label interpolation needs a single-channel label volume")
    index, inside = _to_index(grid, points)
    size = torch.as_tensor(grid.size, device=points.device)
    index = torch.maximum(torch.minimum(index, size - 1.0), torch.zeros_like(index))  # border within half a voxel
    base = index.floor().long().clamp(max=size - 2).clamp(min=0)
    batch = max(volume.shape[0], points.shape[0])
    flat = volume.reshape(volume.shape[0], -1).expand(batch, -1)
    base_lin = _linear_index(base, size).expand(batch, -1)
    best = torch.gather(flat, 1, base_lin)
    # only points in a cell whose 8 corners disagree need a vote: few, in a label image
    cells = uniform_cells(volume) if cells is None else cells
    mixed = ~torch.gather(cells.expand(batch, -1), 1, base_lin)
    if bool(mixed.any()):
        rows = torch.arange(batch, device=points.device)[:, None].expand_as(mixed)[mixed]
        cell, frac = (
            base.expand(batch, -1, -1)[mixed],
            (index.expand(batch, -1, -1)[mixed] - base.expand(batch, -1, -1)[mixed]).to(torch.float32),
        )
        corner_labels, corner_weights = [], []
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    offset = torch.tensor([dx, dy, dz], device=points.device)
                    corner_labels.append(flat[rows, _linear_index(torch.minimum(cell + offset, size - 1), size)])
                    corner_weights.append(torch.where(offset.bool(), frac, 1 - frac).prod(-1))
        lab, w = torch.stack(corner_labels, -1), torch.stack(corner_weights, -1)  # [M, 8]
        # score of each corner's label: the total weight of the corners carrying the same label
        scores = ((lab[:, :, None] == lab[:, None, :]) * w[:, None, :]).sum(-1)
        best[mixed] = torch.gather(lab, -1, scores.argmax(-1, keepdim=True))[:, 0]
    best = torch.where(inside.expand(batch, -1), best.to(torch.float64), torch.as_tensor(padding, dtype=torch.float64))
    return best.reshape(batch, 1, *points.shape[1:-1])


def _linear_index(index: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Flat indices of integer (i, j, k) indices ``[..., 3]`` into a ``size`` (x, y, z) volume."""
    return (index[..., 2] * size[1] + index[..., 1]) * size[0] + index[..., 0]


def uniform_cells(volume: torch.Tensor) -> torch.Tensor:
    """``[B, nz * ny * nx]``: whether the 8 corners of the cell starting at each voxel (the last
    voxel repeated beyond the border) carry one label, for ``volume [B, 1, nz, ny, nx]``."""
    v = volume[:, 0]

    def next_along(t, dim):
        return torch.cat([t.narrow(dim, 1, t.shape[dim] - 1), t.narrow(dim, t.shape[dim] - 1, 1)], dim)

    same = v == next_along(v, 3)  # the x edge
    same = same & next_along(same, 2) & (v == next_along(v, 2))  # the xy face
    same = same & next_along(same, 1) & (v == next_along(v, 1))  # the cell
    return same.reshape(v.shape[0], -1)


def sample_bspline(volume: torch.Tensor, grid: Grid, points: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
    """Cubic B-spline interpolation with ITK's mirror boundary (not differentiable).

    Implemented with ``scipy.ndimage`` on the CPU; used by ``regode warp --interp bspline``.
    """
    from scipy import ndimage

    index, inside = _to_index(grid, points.detach().cpu())
    index = index.reshape(*points.shape).numpy()  # [B, *S, 3] in (i, j, k)
    inside = inside.reshape(points.shape[:-1]).numpy()
    out = []
    vol = volume.detach().double().cpu().numpy()
    for b in range(max(vol.shape[0], index.shape[0])):
        idx = index[min(b, index.shape[0] - 1)]
        # array axes are (k, j, i): reverse the coordinate order for map_coordinates
        zyx = np.moveaxis(idx[..., ::-1], -1, 0)
        channels = []
        for c in range(vol.shape[1]):
            coeffs = ndimage.spline_filter(vol[min(b, vol.shape[0] - 1), c], order=3, mode="mirror")
            channels.append(ndimage.map_coordinates(coeffs, zyx, order=3, mode="mirror", prefilter=False))
        values = np.stack(channels)
        values[:, ~inside[min(b, inside.shape[0] - 1)]] = padding
        out.append(values)
    return torch.as_tensor(np.stack(out), dtype=volume.dtype if volume.is_floating_point() else torch.float64)


def voxel_images(grid: Grid, matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The images ``[B, nz, ny, nx, 3]`` (``dtype``) of ``grid``'s voxel centres under the 4x4 maps
    ``matrix [B, 4, 4]`` of world points: built from three axis vectors by broadcasting, as
    :meth:`Grid.world_points`, so one full-size pass instead of a matrix product per point."""
    m = (matrix @ torch.as_tensor(grid.matrix("index", "world"), dtype=matrix.dtype, device=matrix.device)).to(dtype)
    k, j, i = (torch.arange(n, dtype=dtype, device=matrix.device) for n in grid.shape)
    col = lambda c: m[:, None, None, None, :3, c]  # noqa: E731  [B, 1, 1, 1, 3]
    return col(3) + i[:, None] * col(0) + j[:, None, None] * col(1) + k[:, None, None, None] * col(2)
