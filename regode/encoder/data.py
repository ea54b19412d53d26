"""Training slabs for the translation model: co-registered contrasts of one anatomy, cut into
stacks of adjacent slices, from two sources behind one interface.

- :class:`SyntheticSubjects`: random heads (regode.synthetic's label maps) whose regions get
  a tissue class (white matter, grey matter, deep grey matter, CSF, lesion), rendered as each
  modality with that modality's tissue contrast (T1: CSF dark, white matter bright; T2: the
  reverse; FLAIR: CSF dark, lesions bright; T1c: lesions enhance), jittered per subject and
  region, with the generator's blur, thick slices, bias field, noise and gamma. Needs no download.
- :class:`BrainSubjects`: brain-like subjects drawn from the MNI152 template's tissue maps
  (regode.anatomy), each modality rendered with its CSF, GM and WM means (jittered per subject),
  the skull's tissues random, skull on or off.
- :class:`FolderSubjects`: the contrasts of each subject of a dataset folder in the benchmark
  layout whose names are among the model's modalities, resampled to the training spacing.

A batch is a pure function of (seed, step), so training resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..anatomy import TISSUES, draw_subject, render_subject
from ..datasets import discover
from ..errors import RegodeError
from ..grid import Grid
from ..io import read_image
from ..preprocess import center_of_mass, to_grid
from ..rotations import rotation_matrix
from ..sampling import sample
from ..synthetic import random_head, render_contrast, training_grid

# mean intensity of each tissue class (rows: CSF, GM, WM, deep GM, lesion) in each modality
TISSUE_MEANS = {
    "t1": (0.12, 0.45, 0.75, 0.58, 0.30),
    "t1c": (0.15, 0.47, 0.75, 0.60, 0.85),
    "t2": (0.95, 0.60, 0.35, 0.50, 0.80),
    "flair": (0.08, 0.55, 0.40, 0.50, 0.92),
    "pd": (0.75, 0.70, 0.55, 0.65, 0.80),
}
CLASS_WEIGHTS = torch.tensor([0.10, 0.35, 0.35, 0.10, 0.10])  # regions 2.. of a random head
JITTER = 0.06
SLAB_HEAD = 0.1
"""slab centres and E3D's slice positions lie where a volume's mean intensity is above this: a
stricter foreground than regode.preprocess.FOREGROUND, kept as the shipped encoder was trained
with it."""


@dataclass
class Slabs:
    """A batch: the same slabs of two modalities of one anatomy, ``[B, slices, h, w]`` each."""

    a: torch.Tensor
    b: torch.Tensor
    modality_a: torch.Tensor  # [B] indices into the model's modalities
    modality_b: torch.Tensor
    moved: torch.Tensor | None = None
    """``[F, B, slices, h, w]``: the slabs of ``b`` cut at the same voxels after the subject's ``b``
    volume was moved by growing fractions of one rigid motion (see :meth:`SubjectSource.batch`)."""
    fractions: tuple[float, ...] = ()
    """the F fractions of that motion, increasing, in (0, 1]."""


def slab_indices(center: int, slices: int, n: int) -> torch.Tensor:
    """The ``slices`` slice indices of the slab centred at ``center`` on an axis of ``n`` slices
    (borders replicated)."""
    half = slices // 2
    return torch.arange(center - half, center + half + 1).clamp(0, n - 1)


def slab_points(shape, axis: int, centers: list[int], slices: int) -> torch.Tensor:
    """Voxel indices ``[len(centers), slices, h, w, 3]`` (z, y, x) of the voxels :func:`cut_slabs`
    takes from a volume of ``shape`` (nz, ny, nx), in the same order."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    out = []
    for c in centers:
        axes[axis - 2] = slab_indices(c, slices, shape[axis - 2]).float()
        zyx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # [nz', ny', nx', 3]
        out.append(zyx.movedim(axis - 2, 0))
    return torch.stack(out)


def moved_slabs(volume: torch.Tensor, points: torch.Tensor, rotvec: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``volume [1, 1, nz, ny, nx]`` sampled (trilinear, zeros outside) at voxel ``points [..., 3]``
    (z, y, x) mapped by ``p -> R (p - o) + o + shift``: R the rotation of ``rotvec`` (radians, about
    the volume's centre o), ``shift`` in voxels. Cutting slabs of the volume moved by the inverse
    motion gives the same values."""
    shape = torch.tensor(volume.shape[2:], dtype=torch.float32)
    origin = (shape - 1) / 2
    mapped = (points - origin) @ rotation_matrix(rotvec[None].float())[0].T + origin + shift
    voxels = Grid(tuple(volume.shape[2:][::-1]), (1.0, 1.0, 1.0))  # world = voxel index (x, y, z)
    return sample(volume, voxels, mapped.flip(-1).reshape(1, -1, 3)).reshape(points.shape[:-1])


def cut_slabs(volumes: torch.Tensor, axis: int, centers: list[int], slices: int) -> torch.Tensor:
    """Stacks of ``slices`` adjacent slices ``[len(centers) * V, slices, h, w]`` of volumes
    ``[V, 1, nz, ny, nx]`` along tensor ``axis`` (2, 3 or 4) around each centre (borders
    replicated)."""
    v = volumes[:, 0].movedim(axis - 1, 1)  # [V, n, h, w]
    return torch.cat([v[:, slab_indices(c, slices, v.shape[1])] for c in centers])


class SubjectSource:
    """Base: ``subject(i)`` gives (volumes ``[K, 1, n, n, n]`` of K available modalities, their
    indices); ``batch(step)`` cuts slabs of two random modalities."""

    def __init__(
        self,
        modalities: tuple[str, ...],
        size: int = 96,
        spacing: float = 2.0,
        seed: int = 0,
        slices: int = 5,
        batch: int = 4,
        reuse: int = 4,
        motions: int = 0,
        max_angle: float = 180.0,
        max_shift: float = 40.0,
    ):
        self.modalities, self.size, self.spacing, self.seed = tuple(modalities), size, spacing, seed
        self.slices, self.batch_size, self.reuse = slices, batch, reuse
        self.motions, self.max_angle, self.max_shift = motions, max_angle, max_shift
        self._cache: tuple[int, tuple] | None = None

    def subject(self, index: int, gen: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        raise NotImplementedError

    def _subject(self, index: int):
        if self._cache is None or self._cache[0] != index:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * index + 1)
            self._cache = (index, self.subject(index, gen))
        return self._cache[1]

    def batch(self, step: int) -> Slabs:
        """Slabs of step ``step``: one subject per ``reuse`` steps, two different modalities per
        slab, slab centres inside the head along a random axis. With ``motions`` > 0, also the b
        slabs after ``motions`` growing fractions of one random rigid motion of the b volume: a
        rotation about a random axis through the volume's centre by up to ``max_angle`` degrees
        and a shift in a random direction of up to ``max_shift`` mm (volumes are isotropic at
        ``spacing``; the motion is drawn in voxel (z, y, x) axes)."""
        volumes, present = self._subject(step // self.reuse)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * step + 2)
        axis = 2 + int(torch.randint(3, (1,), generator=gen))
        profile = (volumes[:, 0].mean(0) > SLAB_HEAD).float().movedim(axis - 2, 0).flatten(1).sum(1)
        inside = torch.nonzero(profile > 0.3 * profile.max()).flatten()
        if inside.numel() == 0:
            inside = torch.arange(volumes.shape[axis])
        centers = inside[torch.randint(inside.numel(), (self.batch_size,), generator=gen)].tolist()
        a, b = [], []
        ma, mb, rows_b = [], [], []
        for c in centers:
            i, j = torch.randperm(len(present), generator=gen)[:2].tolist()
            a.append(cut_slabs(volumes[i : i + 1], axis, [c], self.slices))
            b.append(cut_slabs(volumes[j : j + 1], axis, [c], self.slices))
            ma.append(present[i])
            mb.append(present[j])
            rows_b.append(j)
        slabs = Slabs(torch.cat(a), torch.cat(b), torch.tensor(ma), torch.tensor(mb))
        if self.motions:
            slabs.fractions, slabs.moved = self._moved(volumes, axis, centers, rows_b, gen)
        return slabs

    def _moved(self, volumes, axis, centers, which, gen):
        direction = torch.randn(2, 3, generator=gen, dtype=torch.float64)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        size = torch.rand(2, generator=gen, dtype=torch.float64)
        rotvec = direction[0] * size[0] * self.max_angle * torch.pi / 180
        shift = direction[1] * size[1] * self.max_shift / self.spacing
        fractions = torch.rand(self.motions, generator=gen, dtype=torch.float64).sort().values.clamp_min(0.02).tolist()
        points = slab_points(volumes.shape[2:], axis, centers, self.slices)
        moved = torch.stack(
            [
                torch.stack(
                    [
                        moved_slabs(volumes[k : k + 1], points[n], (f * rotvec).float(), (f * shift).float())
                        for n, k in enumerate(which)
                    ]
                )
                for f in fractions
            ]
        )
        return tuple(fractions), moved


def render_modalities(labels: torch.Tensor, grid, modalities, gen: torch.Generator) -> torch.Tensor:
    """Each modality of a random head's label map ``[K, 1, n, n, n]`` (see the module doc)."""
    n = int(labels.max()) + 1
    classes = torch.zeros(n, dtype=torch.long)
    classes[1] = 0  # the rim is CSF
    classes[2:] = torch.multinomial(CLASS_WEIGHTS, max(n - 2, 1), replacement=True, generator=gen)[: n - 2]
    jitter = JITTER * torch.randn(len(modalities), n, generator=gen)
    out = []
    for k, name in enumerate(modalities):
        table = torch.tensor(TISSUE_MEANS.get(name, TISSUE_MEANS["t1"]))
        means = (table[classes] + jitter[k]).clamp(0.02, 1.0)
        means[0] = 0.0
        out.append(render_contrast(labels, grid, gen, means))
    return torch.cat(out)


class SyntheticSubjects(SubjectSource):
    """Random heads (regode.synthetic), each modality rendered from its tissue table."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unknown = [m for m in self.modalities if m not in TISSUE_MEANS]
        if unknown:
            raise RegodeError(
                f"synthetic data renders {', '.join(TISSUE_MEANS)}; no tissue table for {', '.join(unknown)}"
            )

    def subject(self, index, gen):
        grid = training_grid(self.size, self.spacing)
        labels = random_head(grid, gen)
        return render_modalities(labels, grid, self.modalities, gen), list(range(len(self.modalities)))


class BrainSubjects(SyntheticSubjects):
    """Brain-like subjects (regode.anatomy), each modality rendered from its tissue table."""

    def subject(self, index, gen):
        subject = draw_subject(gen, self.spacing, self.size)
        skull = torch.rand(
            2, generator=gen
        )  # bone and scalp: one random intensity each for every modality of the subject
        out = []
        for name in self.modalities:
            csf, gm, wm = TISSUE_MEANS[name][:3]
            means = torch.tensor([0.0, csf, gm, wm, 0.0, 0.0]) + JITTER * torch.randn(len(TISSUES), generator=gen)
            means[4:] = skull * torch.rand(2, generator=gen)
            out.append(render_subject(subject, gen, partial_fov=0.0, means=means.clamp(0.02, 1.0)))
        return torch.cat(out), list(range(len(self.modalities)))


class FolderSubjects(SubjectSource):
    """Subjects of a dataset folder with at least two of the model's modalities (read once)."""

    def __init__(self, data, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subjects = []
        for subject in discover(data):
            names = [c for c in subject.contrasts if c in self.modalities]
            if len(names) < 2:
                continue
            images = {c: read_image(subject.contrasts[c], what=f"{subject.name} {c}") for c in names}
            first = images[names[0]]
            grid = training_grid(self.size, self.spacing, center_of_mass(first.data, first.grid).numpy())
            volumes = torch.cat([to_grid(images[c], grid) for c in names])
            self.subjects.append((volumes, [self.modalities.index(c) for c in names]))
        if not self.subjects:
            raise RegodeError(f"no subject in {data} has two of the contrasts {', '.join(self.modalities)}")

    def subject(self, index, gen):
        return self.subjects[int(torch.randint(len(self.subjects), (1,), generator=gen))]
