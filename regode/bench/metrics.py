"""Registration metrics (BRIEF.md section 5). Arrays are ``[nz, ny, nx]`` numpy arrays on one grid;
displacements are ``[3, nz, ny, nx]`` world mm."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..grid import Grid


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    """Dice (percent) of every non-zero label present in both label maps (others are skipped)."""
    labels = np.intersect1d(np.unique(a), np.unique(b))
    return {
        int(k): float(200 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))) for k in labels if k != 0
    }


def mean_dice(a: np.ndarray, b: np.ndarray) -> float | None:
    per = dice_per_label(a, b)
    return float(np.mean(list(per.values()))) if per else None


def rmse_intensity(registered: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """RMSE inside ``mask`` after scaling both images by the truth's [min, max] inside the mask to [0, 1]."""
    lo, hi = truth[mask].min(), truth[mask].max()
    scale = (hi - lo) if hi > lo else 1.0
    diff = (registered - truth) / scale
    return float(np.sqrt(np.mean(diff[mask] ** 2)))


def rmse_displacement(estimated: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """RMS of the point-to-point distance (mm) between two mappings' displacements inside ``mask``."""
    d2 = np.sum((estimated - truth) ** 2, axis=0)
    return float(np.sqrt(np.mean(d2[mask])))


def jacobian_determinant(displacement: np.ndarray, grid: Grid) -> np.ndarray:
    """det of the Jacobian of ``x -> x + u(x)`` (world mm), central differences."""
    # du/d(index) for each component, then chain rule with d(index)/d(world)
    d_index = np.stack([np.stack(np.gradient(displacement[c], axis=(2, 1, 0)), axis=-1) for c in range(3)], axis=-2)
    to_index = grid.matrix("world", "index")[:3, :3]  # d(index)/d(world)
    jac = d_index @ to_index + np.eye(3)  # [..., 3 (component), 3 (world axis)]
    return np.linalg.det(jac)


def folding_percent(det: np.ndarray, mask: np.ndarray) -> float:
    return float(100 * np.mean(det[mask] <= 0))


def sd_log_jacobian(det: np.ndarray, mask: np.ndarray) -> float:
    return float(np.std(np.log(np.clip(det[mask], 1e-9, None))))


def hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
    """Mean over labels present in both maps of the 95th percentile symmetric surface distance (mm)."""

    sampling = spacing[::-1]  # array axes are (z, y, x)
    values = []
    for k in np.intersect1d(np.unique(a), np.unique(b)):
        if k == 0:
            continue
        ma, mb = a == k, b == k
        sa = ma & ~ndimage.binary_erosion(ma)
        sb = mb & ~ndimage.binary_erosion(mb)
        da = ndimage.distance_transform_edt(~sb, sampling=sampling)[sa]
        db = ndimage.distance_transform_edt(~sa, sampling=sampling)[sb]
        values.append(np.percentile(np.concatenate([da, db]), 95))
    return float(np.mean(values)) if values else None
