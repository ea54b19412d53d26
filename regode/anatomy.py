"""Brain-like synthetic subjects, drawn from the real anatomy of the MNI ICBM152 2009 template.

nilearn installs the template's T1 with its grey- and white-matter probability maps
(regode.templates). From them, on a grid of the training spacing: GM and WM as shipped, CSF the
rest of the template's brain (its brain-extracted T1 above zero), a skull (bone) and a scalp shell
around the brain, background the rest: six tissue probabilities per voxel (:func:`atlas`).

A subject is the atlas seen through a random smooth diffeomorphism (a stationary velocity field
integrated over [0, 1]: the variation between brains; :func:`draw_subject`), as SynthMorph draws
subjects from label maps. A contrast of a subject is a random Gaussian mixture (a mean and a
texture per tissue, mixed by the probabilities: partial volume at every boundary), then blur,
thicker slices along one axis, a bias field, noise, a gamma change and, sometimes, a partial field
of view; the skull is on or off per subject (:func:`render_subject`). Two contrasts of one subject
are an intra-subject pair; two subjects are an inter-subject pair whose fixed -> moving mapping is
known exactly (:func:`inter_subject_pair`). Everything is drawn from a ``torch.Generator``: the same
seed gives the same subjects on every machine, and nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .grid import Grid
from .io import read_image
from .preprocess import blur, normalise
from .sampling import sample
from .synthetic import acquire, smooth_field, training_grid
from .templates import template_file
from .transforms import Compose
from .warp import resample

TISSUES = ("background", "csf", "gm", "wm", "bone", "scalp")
SKULL_MM = (5.0, 11.0)
"""the skull's outer edge and the scalp's, in mm from the brain's surface."""


@functools.lru_cache(maxsize=4)
def atlas(spacing: float) -> tuple[torch.Tensor, Grid]:
    """The template's six tissue probabilities ``[1, 6, nz, ny, nx]`` (float32, summing to 1) on an
    axis-aligned grid of ``spacing`` mm over the template, grown by room for the skull."""
    t1 = read_image(template_file("mni152"), what="template mni152")
    maps = [read_image(template_file("mni152", tissue), what=f"template mni152 {tissue}") for tissue in ("gm", "wm")]
    pad = SKULL_MM[1] + 4 * spacing
    extent = (np.asarray(t1.grid.size) - 1) * np.asarray(t1.grid.spacing) + 2 * pad
    size = tuple(int(n) for n in np.ceil(extent / spacing) + 1)
    center = t1.grid.index_to_world((np.asarray(t1.grid.size) - 1) / 2)
    origin = center - (np.asarray(size) - 1) / 2 * spacing
    grid = Grid(size, (spacing,) * 3, tuple(origin), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    on = lambda image: resample(image.data.float(), image.grid, grid, Compose([])).clamp(min=0)  # noqa: E731
    gm, wm = (on(m) / 255.0 for m in maps)
    gm, wm = gm.clamp(max=1), wm.clamp(max=1)
    total = (gm + wm).clamp(min=1)  # where the two overlap past 1 (interpolation), share out
    gm, wm = gm / total, wm / total
    brain = torch.maximum((on(t1) > 1.0).float(), (gm + wm > 0.1).float())
    brain = blur(brain, (0.5, 0.5, 0.5)).clamp(0, 1)
    csf = (brain - gm - wm).clamp(min=0)
    distance = _distance_outside(brain > 0.5, spacing)
    bone = ((distance > 0) & (distance <= SKULL_MM[0])).float()
    scalp = ((distance > SKULL_MM[0]) & (distance <= SKULL_MM[1])).float()
    shells = blur(torch.cat([bone, scalp], 1), (0.7, 0.7, 0.7)) * (1 - brain)
    probs = torch.cat([torch.zeros_like(gm), csf, gm, wm, shells], 1)
    probs[:, 0] = (1 - probs[:, 1:].sum(1)).clamp(min=0)
    return probs / probs.sum(1, keepdim=True), grid


def _distance_outside(inside: torch.Tensor, spacing: float) -> torch.Tensor:
    """Approximate distance (mm) of every voxel to ``inside`` ``[1, 1, ...]`` by repeated 3x3x3
    dilation (0 inside), up to the scalp's edge."""
    distance = torch.zeros(inside.shape)
    reached = inside.float()
    steps = int(np.ceil(SKULL_MM[1] / spacing)) + 1
    for k in range(1, steps + 1):
        grown = F.max_pool3d(reached, 3, 1, 1)
        distance = torch.where((grown > 0) & (reached == 0), torch.full_like(distance, k * spacing), distance)
        reached = grown
    return torch.where(reached > 0, distance, torch.full_like(distance, float("inf")))


@dataclass
class Subject:
    """One drawn brain: tissue probabilities ``[1, 6, ...]`` on ``grid`` and the velocity field
    whose flow maps the subject's points to the template's (``[1, 3, ...]`` mm on ``grid``)."""

    probs: torch.Tensor
    grid: Grid
    velocity: torch.Tensor
    skull: bool

    def to_template(self, points: torch.Tensor, inverse: bool = False, steps: int = 8) -> torch.Tensor:
        """The flow of the velocity over [0, 1] (``inverse``: over [0, -1]) from ``points [1, ..., 3]``."""
        step = (-1.0 if inverse else 1.0) / steps
        shape = points.shape
        flat = points.reshape(1, -1, 3)
        for _ in range(steps):  # Euler steps through a smooth, small velocity: invertible to rounding
            flat = flat + step * sample(self.velocity, self.grid, flat).reshape(3, -1).T[None]
        return flat.reshape(shape)


def draw_subject(
    gen: torch.Generator, spacing: float = 2.0, size: int = 96, max_sigma: float = 8.0, skull: bool | None = None
) -> Subject:
    """A random subject on a ``size``-cubed grid of ``spacing`` mm centred on the template: the
    atlas through a random diffeomorphism (a velocity of 25-40 mm control spacing, control values
    N(0, s^2) with s ~ U(0, ``max_sigma``) mm); skull drawn on or off when ``skull`` is None."""
    u = lambda lo, hi: float(lo + (hi - lo) * torch.rand(1, generator=gen))  # noqa: E731
    probs, agrid = atlas(spacing)
    grid = training_grid(size, spacing, agrid.center)
    velocity = smooth_field(grid, u(25.0, 40.0), u(0.0, max_sigma), gen).double()
    if skull is None:
        skull = bool(torch.rand(1, generator=gen) < 0.5)
    subject = Subject(torch.empty(0), grid, velocity, skull)
    points = subject.to_template(grid.world_points(dtype=torch.float64)[None]).float()
    subject.probs = sample(probs, agrid, points)
    subject.probs[:, 0] += 1 - subject.probs.sum(1)  # outside the atlas: background
    return subject


def render_subject(
    subject: Subject, gen: torch.Generator, partial_fov: float = 0.2, means: torch.Tensor | None = None
) -> torch.Tensor:
    """One random MRI-like contrast of ``subject`` (``means``: the tissues' mean intensities, else
    drawn): ``[1, 1, nz, ny, nx]`` float32 in [0, 1]."""
    u = lambda lo, hi: float(lo + (hi - lo) * torch.rand(1, generator=gen))  # noqa: E731
    probs, grid = subject.probs, subject.grid
    if not subject.skull:  # skull-stripped: bone and scalp are background
        probs = torch.cat(
            [probs[:, :1] + probs[:, 4:].sum(1, keepdim=True), probs[:, 1:4], torch.zeros_like(probs[:, 4:])], 1
        )
    drawn = torch.rand(len(TISSUES), generator=gen)
    means = drawn if means is None else means.clone()
    means[0] = u(0.0, 0.08) if torch.rand(1, generator=gen) < 0.2 else 0.0
    texture = torch.rand(len(TISSUES), generator=gen) * 0.06
    texture[0] = 0.0
    noise = torch.cat([smooth_field(grid, u(4.0, 10.0), 1.0, gen) for _ in range(2)], 1)[:, : len(TISSUES)]
    image = (probs * (means[None, :, None, None, None] + texture[None, :, None, None, None] * noise)).sum(
        1, keepdim=True
    )
    image = acquire(image, grid, gen, blur_max=0.8, thick_max=2.5, bias_max=0.25)
    if torch.rand(1, generator=gen) < partial_fov:  # a partial field of view: one side cut off
        axis, keep = int(torch.randint(3, (1,), generator=gen)), u(0.6, 0.85)
        n = image.shape[2 + axis]
        cut = int(keep * n)
        index = [slice(None)] * 5
        index[2 + axis] = slice(cut, n) if torch.rand(1, generator=gen) < 0.5 else slice(0, n - cut)
        image[tuple(index)] = 0.0
    return normalise(image)


def tissue_labels(subject: Subject) -> torch.Tensor:
    """The most probable tissue per voxel, ``[1, 1, ...]`` int64 (0 background, 1 CSF, 2 GM, 3 WM,
    4 bone, 5 scalp)."""
    return subject.probs.argmax(1, keepdim=True)


def inter_subject_pair(gen: torch.Generator, spacing: float = 2.0, size: int = 96, max_sigma: float = 8.0):
    """Two subjects and the known fixed -> moving mapping between them: ``(fixed subject, moving
    subject, displacement [1, 3, ...] mm on the fixed grid)``. A fixed point goes to the template
    through the fixed subject's flow and back through the moving subject's inverse flow (exact to
    the flows' integration: under 0.1 mm in the brain at 4 mm; the flows stop at the grid's border)."""
    fixed, moving = draw_subject(gen, spacing, size, max_sigma), draw_subject(gen, spacing, size, max_sigma)
    points = fixed.grid.world_points(dtype=torch.float64)[None]
    mapped = moving.to_template(fixed.to_template(points), inverse=True)
    return fixed, moving, (mapped - points).movedim(-1, 1).float()
