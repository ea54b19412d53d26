"""Training pairs for MS-ODENet with known motion, from two sources behind one interface.

- :class:`SyntheticPairs`: random head-shaped label maps (random smooth shapes, optionally label
  maps a user points to) rendered twice with random contrasts, bias, noise, blur and slice
  thickness; needs no download, so the shipped weights can be rebuilt anywhere.
- :class:`BrainPairs`: two random contrasts of one brain-like subject drawn from the MNI152
  template's tissue maps (regode.anatomy);
- :class:`FolderPairs`: two co-registered contrasts of one subject of a dataset folder in the
  benchmark layout (``DIR/<subject>/<contrast>.nii.gz``), the paper's set-up.

Both add a random motion with exact ground truth. A pair is a pure function of (seed, index):
training can stop and resume anywhere and see the same data.
"""

from __future__ import annotations

import torch

from ..anatomy import draw_subject, render_subject
from ..datasets import discover
from ..errors import RegodeError
from ..grid import Grid
from ..io import read_image
from ..preprocess import center_of_mass, to_grid
from ..sampling import sample_labels
from ..synthetic import random_head, render_contrast, training_grid
from .config import MotionRange
from .kinds import KINDS
from .motion import Pair


class PairSource:
    """Base class: ``pair(index)`` gives one pair as the pure function of (seed, index)."""

    def __init__(
        self, kind: str, size: int = 96, spacing: float = 2.0, motion: MotionRange | None = None, seed: int = 0
    ):
        self.kind, self.size, self.spacing, self.seed = kind, size, spacing, seed
        self.motion = motion or MotionRange()

    def contrasts(self, index: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Grid]:
        raise NotImplementedError

    def pair(self, index: int) -> Pair:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        a, b, grid = self.contrasts(index, gen)
        return KINDS[self.kind].training_pair(a, b, grid, self.motion.at(index), gen)

    def batch(self, start: int, size: int) -> Pair:
        pairs = [self.pair(start + i) for i in range(size)]
        cat = lambda xs: torch.cat(xs) if xs[0] is not None else None  # noqa: E731
        return Pair(
            cat([p.fixed for p in pairs]),
            cat([p.moving for p in pairs]),
            pairs[0].grid,
            cat([p.center for p in pairs]),
            cat([p.theta0 for p in pairs]),
            cat([p.truth for p in pairs]),
        )


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


class BrainPairs(PairSource):
    """Two random contrasts of one brain-like subject (regode.anatomy), skull on or off."""

    def contrasts(self, index, gen):
        subject = draw_subject(gen, self.spacing, self.size)
        return render_subject(subject, gen), render_subject(subject, gen), subject.grid


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


VALIDATION_MASK = 0.02
"""training validation measures RMSE(phi) where the fixed image is above this: a looser mask than
regode.preprocess.FOREGROUND, kept so that logged figures stay comparable with the model cards'."""


def rmse_on_foreground(displacement: torch.Tensor, truth: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """RMSE (mm) between displacement fields ``[B, 3, ...]`` where the fixed image is above
    :data:`VALIDATION_MASK`."""
    mask = (fixed > VALIDATION_MASK).float()
    return (((displacement - truth) ** 2).sum(1, keepdim=True) * mask).sum().div(mask.sum().clamp(min=1)).sqrt()
