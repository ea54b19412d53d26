"""Capture range of similarity metrics: a metric's value as a function of a known rotation or
translation of the moving image away from the true alignment (used by
``benchmarks/capture_range.py``)."""

from __future__ import annotations

import numpy as np
import torch

from ..encoder.features import e3d, e3d_distance, slice_positions
from ..grid import Grid
from ..losses import mattes_mutual_information, mind
from ..sampling import sample
from ..transforms import Rigid

METRICS = ("content", "mi", "mind")


def basin(params, values) -> tuple[float, float, float]:
    """(position of the minimum, lower and upper end of its basin): the widest interval around the
    global minimum over which the curve never decreases moving away from it (where a descent
    method started anywhere inside ends at that minimum)."""
    params, values = np.asarray(params, float), np.asarray(values, float)
    k = int(np.argmin(values))
    lo = k
    while lo > 0 and values[lo - 1] >= values[lo]:
        lo -= 1
    hi = k
    while hi < len(values) - 1 and values[hi + 1] >= values[hi]:
        hi += 1
    return float(params[k]), float(params[lo]), float(params[hi])


class Metrics:
    """Cost functions (lower is better) of a moved volume against one fixed volume on ``grid``."""

    def __init__(self, fixed: torch.Tensor, encoder=None, slices_per_axis: int = 8, seed: int = 0):
        self.fixed, self.encoder = fixed, encoder
        self.fixed_mind = mind(fixed)
        if encoder is not None:
            self.slices = encoder.config.slices
            self.positions = slice_positions(fixed, slices_per_axis, seed)
            with torch.no_grad():
                self.fixed_content = e3d(encoder.content, fixed, self.positions, self.slices)

    @torch.no_grad()
    def __call__(self, name: str, moved: torch.Tensor) -> float:
        if name == "mi":
            return -float(mattes_mutual_information(moved, self.fixed))
        if name == "mind":
            return float((mind(moved) - self.fixed_mind).square().mean())
        return float(e3d_distance(e3d(self.encoder.content, moved, self.positions, self.slices), self.fixed_content))


def moved_by(
    moving: torch.Tensor, grid: Grid, center: torch.Tensor, axis: int, angle_deg: float = 0.0, shift_mm: float = 0.0
) -> torch.Tensor:
    """``moving`` (on ``grid``) resampled on ``grid`` through the fixed -> moving map ``y = R(x - c)
    + c + t``: R the rotation by ``angle_deg`` about world ``axis`` (0 x, 1 y, 2 z) through ``center``,
    t the shift ``shift_mm`` along it (ITK's convention; the image content turns by -angle)."""
    params = torch.zeros(1, 6, dtype=torch.float64)
    params[0, axis] = np.deg2rad(angle_deg)
    params[0, 3 + axis] = shift_mm
    points = grid.world_points(dtype=torch.float64)[None]
    mapped = Rigid(params, center.double()[None])(points)
    return sample(moving, grid, mapped.float())
