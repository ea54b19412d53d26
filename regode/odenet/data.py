"""Training pairs for MS-ODENet with known motion, from two sources behind one interface.

- :class:`SyntheticPairs`: random head-shaped label maps (random smooth shapes, optionally label
  maps a user points to) rendered twice with random contrasts, bias, noise, blur and slice
  thickness; needs no download, so the shipped weights can be rebuilt anywhere.
- :class:`FolderPairs`: two co-registered contrasts of one subject of a dataset folder in the
  benchmark layout (``DIR/<subject>/<contrast>.nii.gz``), the paper's set-up.

Both add a random motion with exact ground truth. A pair is a pure function of (seed, index):
training can stop and resume anywhere and see the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..datasets import discover
from ..errors import RegodeError
from ..grid import Grid
from ..io import read_image
from ..preprocess import center_of_mass, foreground, to_grid
from ..rotations import euler_matrix, rotation_matrix, rotvec_from_matrix
from ..sampling import sample, sample_labels
from ..synthetic import random_head, render_contrast, smooth_field, training_grid
from ..transforms import Rigid
from .config import MotionRange
from .kinds import KINDS


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


@dataclass
class Pair:
    """A batch of training pairs on one grid with the motion ``truth`` (fixed -> moving)."""

    fixed: torch.Tensor  # [B, 1, nz, ny, nx], normalised to [0, 1]
    moving: torch.Tensor
    grid: Grid
    center: torch.Tensor  # [B, 3] rigid centre (the fixed image's centre of mass)
    theta0: torch.Tensor | None  # rigid: [B, 6] start (centre-of-mass translation); else None
    truth: torch.Tensor  # rigid: [B, 6] about ``center``; deformable: [B, 3, nz, ny, nx] mm on ``grid``


class PairSource:
    """Base class: ``pair(index)`` gives one pair as the pure function of (seed, index)."""

    def __init__(self, kind: str, size: int = 96, spacing: float = 2.0, motion: MotionRange | None = None, seed: int = 0):
        self.kind, self.size, self.spacing, self.seed = kind, size, spacing, seed
        self.motion = motion or MotionRange()

    def contrasts(self, index: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Grid]:
        raise NotImplementedError

    def pair(self, index: int) -> Pair:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        a, b, grid = self.contrasts(index, gen)
        motion = self.motion.at(index)
        points = grid.world_points(dtype=torch.float32)[None]
        if KINDS[self.kind].linear:
            # the moving image is contrast b moved by the inverse of the truth (as in the benchmark)
            origin = torch.as_tensor(grid.center, dtype=torch.float64)[None]
            params = random_rigid(motion, gen)[None]
            inverse = Rigid(params, origin).inverse()
            moving = sample(b, grid, inverse(points.double()).float())
            fixed = a
            c_fix = center_of_mass(fixed, grid).double()
            c_mov = center_of_mass(moving, grid).double()
            truth = recenter(params, origin, c_fix[None])
            theta0 = torch.cat([torch.zeros(3, dtype=torch.float64), c_mov - c_fix])[None]
            return Pair(fixed, moving, grid, c_fix[None].float(), theta0.float(), truth.float())
        # deformable: the fixed image is contrast a seen through the truth: fixed(x) = a(truth(x))
        spacing = motion.control_spacings[int(torch.randint(len(motion.control_spacings), (1,), generator=gen))]
        sigma = float(torch.rand(1, generator=gen)) * motion.max_sigma
        disp = smooth_field(grid, spacing, sigma, gen)
        fixed = sample(a, grid, points + disp.movedim(1, -1))
        center = center_of_mass(fixed, grid)[None]
        return Pair(fixed, b, grid, center, None, disp)

    def batch(self, start: int, size: int) -> Pair:
        pairs = [self.pair(start + i) for i in range(size)]
        cat = lambda xs: torch.cat(xs) if xs[0] is not None else None  # noqa: E731
        return Pair(cat([p.fixed for p in pairs]), cat([p.moving for p in pairs]), pairs[0].grid,
                    cat([p.center for p in pairs]), cat([p.theta0 for p in pairs]), cat([p.truth for p in pairs]))


class SyntheticPairs(PairSource):
    """Two random renderings of one random head (or of a user's label map, chosen per pair)."""

    def __init__(self, *args, label_maps: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_maps = label_maps or []  # [(labels [1,1,...] int, grid)]

    def contrasts(self, index, gen):
        grid = training_grid(self.size, self.spacing)
        if self.label_maps and index % 2:
            labels, lgrid = self.label_maps[int(torch.randint(len(self.label_maps), (1,), generator=gen))]
            com = center_of_mass((labels > 0).float(), lgrid)
            grid = training_grid(self.size, self.spacing, com.numpy())
            labels = sample_labels(labels.float(), lgrid, grid.world_points(dtype=torch.float32)[None], 0.0).long()
        else:
            labels = random_head(grid, gen)
        return render_contrast(labels, grid, gen), render_contrast(labels, grid, gen), grid


class FolderPairs(PairSource):
    """Two different contrasts of one subject of a dataset folder, on a training grid centred on
    the subject's centre of mass (the volumes are read once and kept)."""

    def __init__(self, data, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subjects = []
        for subject in discover(data):
            if len(subject.contrasts) < 2:
                continue
            images = {c: read_image(p, what=f"{subject.name} {c}") for c, p in subject.contrasts.items()}
            first = next(iter(images.values()))
            com = center_of_mass(first.data, first.grid)
            grid = training_grid(self.size, self.spacing, com.numpy())
            self.subjects.append(([to_grid(image, grid) for image in images.values()], grid))
        if not self.subjects:
            raise RegodeError(f"no subject in {data} has two contrasts")

    def contrasts(self, index, gen):
        vols, grid = self.subjects[int(torch.randint(len(self.subjects), (1,), generator=gen))]
        i, j = torch.randperm(len(vols), generator=gen)[:2].tolist()
        return vols[i], vols[j], grid


def rmse_on_foreground(displacement: torch.Tensor, truth: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """RMSE (mm) between displacement fields ``[B, 3, ...]`` over the fixed image's foreground."""
    mask = foreground(fixed).float()
    return (((displacement - truth) ** 2).sum(1, keepdim=True) * mask).sum().div(mask.sum().clamp(min=1)).sqrt()
