"""Principal-axes alignment: a start for rigid registration that does not depend on how far the
moving image is rotated.

Each image's head (see :func:`head_mask`) has a centre and three principal axes. The
rotations that carry the fixed image's axes onto the moving image's are known up to the axes'
signs (four proper rotations); together with the plain translation between the head centres (the
start of every registration, :func:`head_center`) they are the candidates, and the one under which
the images share the most mutual information on a coarse grid wins. A head that is nearly round
(close principal variances), or no head at all, has no reliable axes: then the start is kept. The rigid MS-ODENet stage starts
from the winner.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import Grid
from .losses import mattes_mutual_information
from .sampling import sample
from .transforms import Affine

MIN_RATIO = 1.1
"""the principal variances of both heads must differ by this factor (brains: 1.24 or more; a
sphere-like head has no axes to align), else only the start (the head centres' translation) is used."""
SIGNS = np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], dtype=float)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """The head: voxels above 10 % of the way from the 2nd to the 98th intensity percentile (the
    robust threshold of FSL's BET), holes filled so that dark tissue inside counts too."""
    from scipy import ndimage

    values = volume.reshape(-1)
    low, high = np.percentile(values[:: max(1, values.size // 1_000_000)], [2, 98])
    return ndimage.binary_fill_holes(volume > low + 0.1 * (high - low))


def moments(volume: torch.Tensor, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (mm), principal variances (mm², ascending) and axes (columns, world) of the
    foreground of the first volume of ``[B, 1, nz, ny, nx]``."""
    v = volume[0, 0].detach().double().cpu().numpy()
    mask = head_mask(v)
    index = np.argwhere(mask)[:, ::-1].astype(float)  # (i, j, k)
    if len(index) < 10:
        raise ValueError("too few foreground voxels for a principal-axes alignment")
    points = grid.index_to_world(index)
    center = points.mean(0)
    variances, axes = np.linalg.eigh(np.cov((points - center).T))
    return center, variances, axes


def head_moments(volume: torch.Tensor, grid: Grid) -> tuple | None:
    """:func:`moments`, or None when the image has no head to measure."""
    try:
        return moments(volume, grid)
    except ValueError:
        return None


def head_center(volume: torch.Tensor, grid: Grid, head: tuple | None = None) -> torch.Tensor:
    """World position (mm, float64) of the centre of the head mask of ``[B, 1, ...]``'s first
    volume (``head``: its :func:`head_moments`, if already known): unlike the intensity-weighted
    centre of mass it hardly depends on the contrast (on BraTS pairs of two contrasts the weighted
    centres differ by a few mm, which a deformable model without a linear stage must then undo).
    Falls back to the centre of mass without a head."""
    from .odenet.preprocess import center_of_mass

    head = head if head is not None else head_moments(volume, grid)
    if head is None:
        return center_of_mass(volume, grid).double()
    return torch.as_tensor(head[0], dtype=torch.float64)


def candidates(fixed: tuple, moving: tuple) -> list[Affine]:
    """The four rotations that carry the fixed principal axes onto the moving ones (the axes' signs
    are unknown), each about the heads' centres: fixed -> moving maps, float64."""
    (c_f, _, a_f), (c_m, _, a_m) = fixed, moving
    if np.linalg.det(a_m @ a_f.T) < 0:
        a_m = a_m * np.array([1, 1, -1.0])
    maps = [a_m @ np.diag(s) @ a_f.T for s in SIGNS]
    return [Affine(torch.as_tensor(r), torch.as_tensor(c_m - r @ c_f)[None]) for r in maps]


def principal_axes(fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid,
                   start: Affine, spacing: float = 4.0, heads: tuple | None = None) -> tuple[Affine, dict]:
    """Of ``start`` (the translation between the head centres) and the principal-axes candidates (see
    :func:`candidates`) for two working images (values in [0, 1]), the one under which the images
    share the most mutual information, measured at ``spacing`` mm; and a record of the choice.
    Without reliable axes (a round or empty head) ``start`` is returned. ``heads``: the two
    images' :func:`head_moments`, if already known."""
    from .odenet.preprocess import blur

    maps, record = [start.double()], {}
    fixed_moments, moving_moments = heads if heads is not None else (head_moments(fixed, fixed_grid), head_moments(moving, moving_grid))
    if fixed_moments is None or moving_moments is None:
        record["skipped"] = "too few foreground voxels for a principal-axes alignment"
    else:
        ratios = np.array([min(v[1:] / np.maximum(v[:-1], 1e-12)) for _, v, _ in (fixed_moments, moving_moments)])
        record["variance_ratios"] = ratios.tolist()
        if np.all(np.isfinite(ratios) & (ratios >= MIN_RATIO)):
            maps += candidates(fixed_moments, moving_moments)
        else:
            record["skipped"] = f"principal variances closer than a factor {MIN_RATIO}: no reliable axes"
    if len(maps) == 1:
        return maps[0], {**record, "candidate_mi": [], "chosen": 0}
    coarse = fixed_grid.with_spacing(spacing)
    f = sample(blur(fixed, [0.5 * spacing / s for s in fixed_grid.spacing]), fixed_grid,
               coarse.world_points(dtype=fixed.dtype, device=fixed.device)[None])
    m = blur(moving, [0.5 * spacing / s for s in moving_grid.spacing])
    scores = []
    for linear in maps:
        warped = sample(m, moving_grid, linear.map_grid(coarse, dtype=fixed.dtype).to(fixed.device))
        scores.append(float(mattes_mutual_information(warped, f)))
    best = int(np.argmax(scores))
    return maps[best], {**record, "candidate_mi": scores, "chosen": best}
