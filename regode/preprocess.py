"""Pre-processing that every command shares: smoothing, robust intensity normalisation, the
working images, the head (its mask, moments and centre) and the foreground of a working image.

Working images are isotropic, normalised to [0, 1]; :data:`FOREGROUND` is the one threshold that
tells their foreground (the lattices' region, feature statistics, validation masks)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import RegodeError
from .grid import Grid
from .sampling import sample_on_grid
from .transforms import Compose
from .warp import resample


def blur(volume: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B, C, nz, ny, nx]`` with ``sigmas`` (voxels) along
    (x, y, z); a sigma below 0.1 leaves that axis alone. Borders are replicated, the kernel reaches
    ``ceil(3 sigma)`` voxels. On the CPU without gradients SciPy does it (several times faster than
    PyTorch's conv3d with a one-dimensional kernel); otherwise it is a differentiable convolution,
    the same filter."""
    radii = [max(1, int(np.ceil(3 * sigma))) for sigma in sigmas]
    if volume.device.type == "cpu" and not (volume.requires_grad and torch.is_grad_enabled()):
        out = volume.detach().reshape(-1, *volume.shape[2:]).numpy().copy()
        for axis, (sigma, radius) in enumerate(zip(sigmas, radii, strict=False)):
            if sigma >= 0.1:  # x is the last array axis
                ndimage.gaussian_filter1d(out, sigma, axis=3 - axis, mode="nearest", radius=radius, output=out)
        return torch.from_numpy(out).reshape(volume.shape)
    b, c = volume.shape[:2]
    out = volume.reshape(b * c, 1, *volume.shape[2:])
    for axis, (sigma, radius) in enumerate(zip(sigmas, radii, strict=False)):
        if sigma < 0.1:
            continue
        x = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        dim = 4 - axis  # x is the last tensor dimension
        shape = [1, 1, 1, 1, 1]
        shape[dim] = -1
        pad = [0] * 6
        pad[2 * axis] = pad[2 * axis + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), (k / k.sum()).reshape(shape))
    return out.reshape(volume.shape)


def normalise(volume: torch.Tensor, low: float = 0.5, high: float = 99.5) -> torch.Tensor:
    """Map each volume of ``[B, 1, ...]`` to [0, 1]: its ``low`` percentile to 0 and the ``high``
    percentile of the voxels above that (by more than a millionth of the range up to the ``high``
    percentile) to 1, clipped (robust to outliers, to background, and to rounding in the background)."""
    out = torch.empty_like(volume)
    for i, v in enumerate(volume):
        flat = v.reshape(-1)
        step = max(1, flat.numel() // 2_000_000)
        values = flat[::step].double().cpu().numpy()
        lo, top = np.percentile(values, [low, high])  # one partial sort for both
        # values within rounding of lo count as background: an interpolation's last bits on an
        # exactly flat background must not move the bright percentile. The range is read at the
        # high percentile, so that one outlier cannot widen it (the maximum where that is lo)
        above = values[values > lo + 1e-6 * ((top if top > lo else values.max()) - lo)]
        hi = np.percentile(above, high) if above.size else lo + 1
        out[i] = ((v - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
    return out


def to_grid(image, grid: Grid) -> torch.Tensor:
    """``image`` (an :class:`~regode.io.Image`) resampled onto ``grid`` (world LPS, linear), smoothed
    first along every axis the new grid samples more coarsely, and normalised to [0, 1]."""
    sigmas = [
        0.5 * (new / old) if new > old * 1.01 else 0.0
        for old, new in zip(image.grid.spacing, grid.spacing, strict=False)
    ]
    smoothed = blur(image.data, sigmas)
    if grid.parallel_to(image.grid):  # the usual case (Grid.with_spacing): three one-dimensional interpolations
        return normalise(sample_on_grid(smoothed.float(), image.grid, grid))
    return normalise(
        resample(smoothed, image.grid, grid, Compose([]))
    )  # slab by slab: no world point per voxel at once


FOREGROUND = 0.05
"""a working image's voxels above this (of [0, 1]) are its foreground."""


def foreground(volume: torch.Tensor) -> torch.Tensor:
    """The foreground mask of a working image ``[..., nz, ny, nx]`` (values in [0, 1])."""
    return volume > FOREGROUND


def working_image(image, spacing: float, device: torch.device) -> tuple[torch.Tensor, Grid]:
    """``image`` (an :class:`~regode.io.Image`) on an isotropic grid of ``spacing`` mm over its own
    field of view, anti-aliased and normalised to [0, 1], on ``device``."""
    grid = image.grid.with_spacing(spacing)
    return working_on(image, grid, device), grid


def working_on(image, grid: Grid, device: torch.device) -> torch.Tensor:
    """``image`` resampled onto the working ``grid`` (world LPS mm: another channel of a subject,
    on its own grid, onto its first channel's working grid) and normalised to [0, 1], on ``device``;
    an image of NaNs or of one value is refused with its name."""
    if not bool(torch.isfinite(image.data).all()):
        raise RegodeError(f"{image.path or 'image'} contains NaN or infinite values")
    if float(image.data.max()) <= float(image.data.min()):
        raise RegodeError(f"{image.path or 'image'} is constant: nothing to register")
    return to_grid(image, grid).to(device)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """The head: voxels above 10 % of the way from the 2nd to the 98th intensity percentile (the
    robust threshold of FSL's BET), holes filled so that dark tissue inside counts too."""
    values = volume.reshape(-1)
    low, high = np.percentile(values[:: max(1, values.size // 1_000_000)], [2, 98])
    above = volume > low + 0.1 * (high - low)
    # holes: the parts of the background (face-connected, as binary_fill_holes) that do not reach
    # the volume's border; labelling them once is twice as fast as binary_fill_holes' dilations
    labels, _ = ndimage.label(~above)
    outside = np.zeros(labels.max() + 1, dtype=bool)
    for axis in range(volume.ndim):
        outside[np.take(labels, [0, -1], axis=axis)] = True
    outside[0] = False  # label 0 is the head itself
    return ~outside[labels]


def moments(volume: torch.Tensor, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (mm), principal variances (mm², ascending) and axes (columns, world) of the
    head (:func:`head_mask`) of the first volume of ``[B, 1, nz, ny, nx]``."""
    v = volume[0, 0].detach().double().cpu().numpy()
    mask = head_mask(v).astype(float)
    count = mask.sum()
    if count < 10:
        raise ValueError("too few foreground voxels for a principal-axes alignment")
    # the mask's first and second moments of the voxel index (i, j, k), from its sums over one and
    # two axes, not from a list of its voxels; world coordinates are an affine map of the index
    k, j, i = (np.arange(n, dtype=float) for n in mask.shape)
    over_i, over_j, over_k = mask.sum(2), mask.sum(1), mask.sum(0)  # [k, j], [k, i], [j, i]
    first = np.array([over_k.sum(0) @ i, over_k.sum(1) @ j, over_j.sum(1) @ k]) / count
    ij, ik, jk = j @ over_k @ i, k @ over_j @ i, k @ over_i @ j
    second = np.array([[over_k.sum(0) @ i**2, ij, ik], [ij, over_k.sum(1) @ j**2, jk], [ik, jk, over_j.sum(1) @ k**2]])
    scatter = second - count * np.outer(first, first)  # sum of (index - mean)(index - mean)^T
    linear = grid.direction_matrix * np.asarray(grid.spacing)[None, :]  # index -> world
    variances, axes = np.linalg.eigh(linear @ scatter @ linear.T / (count - 1))
    return grid.index_to_world(first), variances, axes


def head_moments(volume: torch.Tensor, grid: Grid) -> tuple | None:
    """:func:`moments`, or None when the image has no head to measure."""
    try:
        return moments(volume, grid)
    except ValueError:
        return None


def head_center(volume: torch.Tensor, grid: Grid, head: tuple | None = None) -> torch.Tensor:
    """World position (mm, float64) of the centre of the head mask of ``[B, 1, ...]``'s first
    volume (``head``: its :func:`head_moments`, if already known): the centre every command starts
    from. Unlike the intensity-weighted centre of mass it hardly depends on the contrast. Falls back to the centre of
    mass without a head."""
    head = head if head is not None else head_moments(volume, grid)
    if head is None:
        return center_of_mass(volume, grid).double()
    return torch.as_tensor(head[0], dtype=torch.float64)


def center_of_mass(volume: torch.Tensor, grid: Grid) -> torch.Tensor:
    """World position (mm) of the intensity-weighted centre of the first volume of ``[B, 1, ...]``."""
    v = volume[0, 0].double().clamp(min=0)
    total = float(v.sum())
    if total <= 0:
        return torch.as_tensor(grid.center, dtype=torch.float32)
    idx = [torch.arange(n, dtype=torch.float64, device=v.device) for n in v.shape]  # z, y, x
    kz = float((v.sum((1, 2)) * idx[0]).sum()) / total
    ky = float((v.sum((0, 2)) * idx[1]).sum()) / total
    kx = float((v.sum((0, 1)) * idx[2]).sum()) / total
    return torch.as_tensor(grid.index_to_world(np.array([kx, ky, kz])), dtype=torch.float32)


def working_mask(mask, grid: Grid, device) -> torch.Tensor | None:
    """A mask image (non-zero = inside, on any grid) on the working ``grid``: ``[1, 1, ...]`` of 0
    and 1 (inside where at least half of the resampled mask is); None for no mask."""
    if mask is None:
        return None
    inside = (resample((mask.data[:, :1] != 0).float(), mask.grid, grid, Compose([])) > 0.5).float()
    if not bool(inside.any()):
        raise RegodeError(
            f"mask {mask.path or ''} has no voxel inside its image's field of view (empty, or in another space)"
        )
    return inside.to(device)
