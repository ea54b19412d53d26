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

from ..grid import Grid
from ..sampling import sample, sample_labels
from ..transforms import BSpline, Rigid, Transform, euler_matrix
from .preprocess import blur, center_of_mass, normalise, to_grid


@dataclass
class MotionRange:
    """Random motion used in training (rotations as ITK Euler angles about x, y, z)."""

    max_rotation: float = 80.0
    """degrees, U(-a, a) per axis (rigid)."""
    max_translation: float = 20.0
    """mm, U(-t, t) per axis (rigid)."""
    max_sigma: float = 10.0
    """B-spline control displacement sd in mm, drawn U(0, max) per pair (deformable)."""
    control_spacings: tuple[float, ...] = (30.0, 40.0, 50.0)
    """B-spline control spacings (mm) of the deformable motion, one drawn per pair."""
    ramp_pairs: int = 0
    """curriculum: the motion ranges grow linearly from 20 % to 100 % over the first ``ramp_pairs``
    training pairs (0: no ramp)."""

    def at(self, index: int) -> "MotionRange":
        """The ranges for training pair ``index``."""
        if not self.ramp_pairs or index >= self.ramp_pairs:
            return self
        f = 0.2 + 0.8 * index / self.ramp_pairs
        return MotionRange(self.max_rotation * f, self.max_translation * f, self.max_sigma * f, self.control_spacings, 0)


def training_grid(size: int, spacing: float, center=(0.0, 0.0, 0.0)) -> Grid:
    """A ``size``-cubed axis-aligned grid of ``spacing`` mm centred on ``center`` (world LPS)."""
    origin = np.asarray(center, dtype=float) - spacing * (size - 1) / 2
    return Grid((size,) * 3, (spacing,) * 3, tuple(origin), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _smooth_field(grid: Grid, spacing: float, sigma: float, gen: torch.Generator) -> torch.Tensor:
    control = BSpline.control_grid_for(grid, spacing)
    coef = torch.randn(1, 3, *control.shape, generator=gen, dtype=torch.float32) * sigma
    return BSpline(control, coef).displacement(grid)  # [1, 3, nz, ny, nx]


def random_head(grid: Grid, gen: torch.Generator) -> torch.Tensor:
    """A random head-like label map ``[1, 1, nz, ny, nx]`` (int64): a distorted ellipsoid of brain
    size (0 outside), a 'CSF' rim (label 1) and 6-16 smooth random regions inside (SynthMorph-style
    argmax of smooth noise)."""
    u = lambda lo, hi, n=1: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    points = grid.world_points(dtype=torch.float32)[None]
    center = torch.as_tensor(grid.center, dtype=torch.float32) + u(-10, 10, 3)
    radii = torch.cat([u(55, 72), u(68, 90), u(50, 68)])
    local = points - center + _smooth_field(grid, 40.0, float(u(2, 8)), gen).movedim(1, -1)
    r = (local / radii).norm(dim=-1)[:, None]
    n = int(u(6, 17))
    noise = torch.cat([_smooth_field(grid, float(u(12, 30)), 1.0, gen) for _ in range((n + 2) // 3)], dim=1)[:, :n]
    labels = noise.argmax(dim=1, keepdim=True) + 2
    rim = float(u(0.88, 0.95))
    labels = torch.where(r > rim, torch.ones_like(labels), labels)
    return torch.where(r > 1, torch.zeros_like(labels), labels)


def render_contrast(labels: torch.Tensor, grid: Grid, gen: torch.Generator, means: torch.Tensor | None = None) -> torch.Tensor:
    """One random MRI-like contrast of a label map: a random intensity per label (background dark;
    or the given ``means`` per label), partial-volume blur, thick slices along a random axis, a
    smooth bias field, noise and a gamma change, normalised as ``regode register`` normalises its
    inputs. ``[1, 1, nz, ny, nx]`` float32."""
    u = lambda lo, hi: float(lo + (hi - lo) * torch.rand(1, generator=gen))  # noqa: E731
    if means is None:
        means = torch.rand(int(labels.max()) + 1, generator=gen)
        means[0] = u(0.0, 0.1) if torch.rand(1, generator=gen) < 0.2 else 0.0
    image = means[labels.long()] + 0.03 * torch.randn(labels.shape, generator=gen) * (labels > 0)
    sigmas = [u(0.3, 1.0)] * 3
    sigmas[int(torch.randint(3, (1,), generator=gen))] = u(0.3, 2.0)  # thicker slices on one axis
    image = blur(image, sigmas)
    image = image * torch.exp(_smooth_field(grid, 80.0, u(0.0, 0.2), gen)[:, :1])
    image = image.clamp(min=0) + u(0.0, 0.04) * torch.randn(image.shape, generator=gen).abs()
    image = image ** float(np.exp(u(-0.3, 0.3)))
    return normalise(image)


def random_rigid(motion: MotionRange, gen: torch.Generator) -> torch.Tensor:
    """Rigid parameters ``[6]`` (rotation vector, translation) of a random rotation (Euler angles
    U(-a, a) per axis) and translation U(-t, t) mm per axis."""
    angles = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * np.deg2rad(motion.max_rotation)
    shift = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * motion.max_translation
    return torch.cat([rotvec_from_matrix(euler_matrix(angles)), shift])


def rotvec_from_matrix(r: torch.Tensor) -> torch.Tensor:
    from scipy.spatial.transform import Rotation

    return torch.as_tensor(Rotation.from_matrix(r.detach().cpu().numpy()).as_rotvec(), dtype=torch.float64)


def recenter(params: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """The parameters of the same rigid motion about ``new`` instead of ``old`` (``[B, 6]``)."""
    from ..transforms import rotation_matrix

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
        if self.kind == "rigid":
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
        disp = _smooth_field(grid, spacing, sigma, gen)
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
        from ..bench.run import discover
        from ..errors import RegodeError
        from ..io import read_image

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
    mask = (fixed > 0.02).float()
    return (((displacement - truth) ** 2).sum(1, keepdim=True) * mask).sum().div(mask.sum().clamp(min=1)).sqrt()


def truth_displacement(kind: str, pair: Pair, transform_of: "callable") -> torch.Tensor:
    """The ground-truth displacement ``[B, 3, ...]`` of a pair on its grid."""
    if kind != "rigid":
        return pair.truth
    t: Transform = transform_of(pair.truth, pair.center)
    return t.displacement(pair.grid)
