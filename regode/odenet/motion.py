"""Training pairs with exact ground truth: two co-registered contrasts ``a``, ``b`` of one anatomy
and a random motion between them, drawn the way a model kind needs it (regode.odenet.kinds):

- :func:`rigid_pair`: the moving image is ``b`` moved by the inverse of a random rigid motion (as in
  the benchmark); the truth is the motion's parameters about the fixed image's centre of mass;
- :func:`affine_pair`: as :func:`rigid_pair` with a random affine motion (rotation, scale, shear,
  translation: the variation between two subjects' heads); the truth is the affine's parameters
  (``A - I`` row by row, then the translation) about the fixed image's centre of mass;
- :func:`deformable_pair`: the fixed image is ``a`` seen through a random smooth B-spline
  displacement; the truth is that displacement field (mm) on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..grid import Grid
from ..preprocess import center_of_mass
from ..rotations import euler_matrix, rotation_matrix, rotvec_from_matrix
from ..sampling import sample
from ..synthetic import smooth_field
from ..transforms import Affine, Rigid
from .config import MotionRange


@dataclass
class Pair:
    """A batch of training pairs on one grid with the motion ``truth`` (fixed -> moving)."""

    fixed: torch.Tensor  # [B, 1, nz, ny, nx], normalised to [0, 1]
    moving: torch.Tensor
    grid: Grid
    center: torch.Tensor  # [B, 3] rigid centre (the fixed image's centre of mass)
    theta0: torch.Tensor | None  # rigid: [B, 6] start (centre-of-mass translation); else None
    truth: torch.Tensor  # rigid: [B, 6] about ``center``; deformable: [B, 3, nz, ny, nx] mm on ``grid``


def random_rigid(motion: MotionRange, gen: torch.Generator) -> torch.Tensor:
    """Rigid parameters ``[6]`` (rotation vector, translation) of a random rotation (Euler angles
    U(-a, a) per axis) and translation U(-t, t) mm per axis."""
    angles = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * np.deg2rad(motion.max_rotation)
    shift = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * motion.max_translation
    return torch.cat([rotvec_from_matrix(euler_matrix(angles)), shift])


def recenter(params: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The parameters of the same rigid motion about ``new`` instead of ``old`` (``[B, 6]``)."""
    r = rotation_matrix(params[:, :3])
    shift = (r @ (new - old)[..., None])[..., 0] + old - new + params[:, 3:]
    return torch.cat([params[:, :3], shift], dim=1)


def random_affine(motion: MotionRange, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The matrix ``[3, 3]`` and translation ``[3]`` of a random affine motion: a random rotation
    (as :func:`random_rigid`) after shears U(-h, h) and scales exp(U(-s, s)) per axis."""
    rigid = random_rigid(motion, gen)
    scales = torch.exp((torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * motion.max_scale)
    shear = torch.eye(3, dtype=torch.float64)
    shear[0, 1], shear[0, 2], shear[1, 2] = (
        (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * motion.max_shear
    ).tolist()
    return rotation_matrix(rigid[:3]) @ shear @ torch.diag(scales), rigid[3:]


def _moved_pair(a: torch.Tensor, b: torch.Tensor, grid: Grid, motion, gen: torch.Generator, affine: bool) -> Pair:
    """``b`` moved by the inverse of a random rigid (or affine) motion about the grid's centre; the
    truth is that motion's parameters about the fixed image's centre of mass."""
    points = grid.world_points(dtype=torch.float32)[None]
    origin = torch.as_tensor(grid.center, dtype=torch.float64)[None]
    if affine:
        matrix, shift = random_affine(motion, gen)
        truth_map = Affine(matrix[None], shift[None], origin)
    else:
        truth_map = Rigid(random_rigid(motion, gen)[None], origin)
    moving = sample(b, grid, truth_map.inverse()(points.double()).float())
    c_fix = center_of_mass(a, grid).double()
    c_mov = center_of_mass(moving, grid).double()
    if affine:
        about = Affine(
            truth_map.matrix, truth_map.offset + (truth_map.matrix @ c_fix[:, None])[..., 0] - c_fix, c_fix[None]
        )
        truth = torch.cat([(about.matrix - torch.eye(3, dtype=torch.float64)).flatten(1), about.translation], 1)
        theta0 = torch.cat([torch.zeros(9, dtype=torch.float64), c_mov - c_fix])[None]
    else:
        truth = recenter(truth_map.params, origin, c_fix[None])
        theta0 = torch.cat([torch.zeros(3, dtype=torch.float64), c_mov - c_fix])[None]
    return Pair(a, moving, grid, c_fix[None].float(), theta0.float(), truth.float())


def rigid_pair(a: torch.Tensor, b: torch.Tensor, grid: Grid, motion: MotionRange, gen: torch.Generator) -> Pair:
    return _moved_pair(a, b, grid, motion, gen, affine=False)


def affine_pair(a: torch.Tensor, b: torch.Tensor, grid: Grid, motion: MotionRange, gen: torch.Generator) -> Pair:
    return _moved_pair(a, b, grid, motion, gen, affine=True)


def deformable_pair(a: torch.Tensor, b: torch.Tensor, grid: Grid, motion: MotionRange, gen: torch.Generator) -> Pair:
    points = grid.world_points(dtype=torch.float32)[None]
    spacing = motion.control_spacings[int(torch.randint(len(motion.control_spacings), (1,), generator=gen))]
    sigma = float(torch.rand(1, generator=gen)) * motion.max_sigma
    disp = smooth_field(grid, spacing, sigma, gen)
    fixed = sample(a, grid, points + disp.movedim(1, -1))
    center = center_of_mass(fixed, grid)[None]
    return Pair(fixed, b, grid, center, None, disp)
