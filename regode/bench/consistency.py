"""Inverse consistency: how far a point of the fixed image lands from where it started once mapped
by a method's fixed -> moving transform and then by its inverse (mm)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ..grid import Grid
from ..transforms import DisplacementField, Transform

NUMERICAL = "numerical (ITK InvertDisplacementFieldImageFilter)"
"""how the record marks an inverse the benchmark computed for a method that writes none."""


def numerical_inverse(displacement: np.ndarray, grid: Grid) -> DisplacementField:
    """The inverse of a mapping whose method writes none, from its displacement ``[3, nz, ny, nx]``
    (world LPS mm, ``T(x) - x`` at the voxel centres of the fixed ``grid``), by ITK's
    InvertDisplacementFieldImageFilter: ``T^-1(y) = y + v(y)`` with ``v`` on the same grid, which
    must therefore cover the moving image's brain."""
    field = sitk.GetImageFromArray(np.moveaxis(displacement, 0, -1).astype(np.float64), isVector=True)
    field.SetSpacing(grid.spacing)  # the grid's (x, y, z) geometry, as ITK orders it
    field.SetOrigin(grid.origin)
    field.SetDirection(grid.direction)
    invert = sitk.InvertDisplacementFieldImageFilter()
    invert.SetMaximumNumberOfIterations(50)
    invert.SetMaxErrorToleranceThreshold(0.01)
    invert.SetMeanErrorToleranceThreshold(0.001)
    invert.SetEnforceBoundaryCondition(True)
    inverse = sitk.GetArrayFromImage(invert.Execute(field))  # [nz, ny, nx, 3]
    return DisplacementField(grid, torch.from_numpy(np.ascontiguousarray(np.moveaxis(inverse, -1, 0)))[None])


def inverse_consistency(
    transform: Transform, inverse: Transform, grid: Grid, mask: np.ndarray, chunk: int = 1 << 19
) -> tuple[float, float]:
    """The median and the 95th percentile (mm) of ``|inverse(transform(x)) - x|`` over the voxel
    centres ``x`` of ``grid`` inside ``mask`` (``[nz, ny, nx]``)."""
    points = grid.world_points(dtype=torch.float64)[torch.from_numpy(np.asarray(mask, dtype=bool))]
    errors = []
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            x = points[start : start + chunk][None]
            errors.append((inverse(transform(x)) - x).norm(dim=-1)[0])
    error = torch.cat(errors).numpy() if errors else np.zeros(1)
    return float(np.median(error)), float(np.percentile(error, 95))
