"""Synthetic motion with exact ground truth (the MS-ODENet paper's protocol).

A motion is the mapping ``truth`` from fixed-space points to moving-space points that a perfect
registration returns (an ANTs forward transform). The moving image of a case is the co-registered
contrast resampled through ``truth``'s inverse, so ``moving(truth(x)) = contrast(x)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..grid import Grid
from ..rotations import euler_matrix
from ..transforms import Affine, BSpline, Compose, DisplacementField, Transform
from .config import TASKS, MotionConfig


def rigid_about_center(angles_deg: np.ndarray, translation: np.ndarray, center: np.ndarray) -> Affine:
    matrix = euler_matrix(torch.as_tensor(np.deg2rad(angles_deg), dtype=torch.float64))
    return Affine(
        matrix, torch.as_tensor(translation, dtype=torch.float64), torch.as_tensor(center, dtype=torch.float64)
    )


def random_affine(grid: Grid, rng: np.random.Generator, config: MotionConfig) -> Affine:
    """The inter-subject task's affine about the centre of ``grid``: a rotation, shears and scales."""
    rot = rigid_about_center(
        rng.uniform(-config.inter_max_rotation, config.inter_max_rotation, 3),
        rng.uniform(-config.inter_max_translation, config.inter_max_translation, 3),
        grid.center,
    )
    shear = np.eye(3)
    shear[0, 1], shear[0, 2], shear[1, 2] = rng.uniform(-config.inter_max_shear, config.inter_max_shear, 3)
    scales = np.exp(rng.uniform(-config.inter_max_scale, config.inter_max_scale, 3))
    matrix = rot.matrix[0] @ torch.as_tensor(shear @ np.diag(scales))
    return Affine(matrix, rot.translation, rot.center)


def sample_motion(task: str, grid: Grid, rng: np.random.Generator, config: MotionConfig = MotionConfig()) -> Transform:
    """A random ``truth`` (fixed -> moving mapping) for ``task`` about the centre of ``grid``
    (``inter-subject``: an affine, then a deformation, for a subject against itself)."""
    if task not in TASKS + ("inter-subject",):
        raise ValueError(f"task must be one of {TASKS} or inter-subject")
    parts: list[Transform] = []
    if task == "inter-subject":
        parts.append(random_affine(grid, rng, config))
    elif task != "deformable":
        rot = config.max_rotation if task == "rigid" else config.hybrid_max_rotation
        shift = config.max_translation if task == "rigid" else config.hybrid_max_translation
        parts.append(rigid_about_center(rng.uniform(-rot, rot, 3), rng.uniform(-shift, shift, 3), grid.center))
    if task != "rigid":
        control = BSpline.control_grid_for(grid, config.control_spacing)
        coef = torch.as_tensor(rng.normal(0.0, config.bspline_sigma, (1, 3, *control.shape)))
        parts.append(BSpline(control, coef))
    # points meet the B-spline first, then the rigid motion (Compose applies the last part first)
    return parts[0] if len(parts) == 1 else Compose(parts)


def inverse_on(truth: Transform, grid: Grid) -> Transform:
    """The inverse of ``truth`` for resampling onto ``grid``: exact for linear parts, a
    fixed-point displacement-field inverse for B-spline parts (on ``grid``)."""
    parts = list(truth.transforms) if isinstance(truth, Compose) else [truth]
    inverted = []
    for part in reversed(parts):
        if part.is_linear:
            inverted.append(part.inverse())
        else:
            inverted.append(DisplacementField(grid, part.displacement(grid)).inverse(iterations=50))
    return inverted[0] if len(inverted) == 1 else Compose(inverted)
