"""Synthetic heads and smooth deformations: the one place that generates images.

- :func:`phantom_labels` and :func:`render`: a fixed, compact Voronoi phantom and its contrasts,
  for tests and ``regode demo`` (reproducible from a seed alone);
- :func:`random_head` and :func:`render_contrast`: random head-shaped label maps and random
  MRI-like contrasts of them (SynthMorph-style), the training data of every model
  (regode.odenet.data, regode.encoder.data), drawn from a ``torch.Generator``.

Everything here is seeded: the same seed gives the same volume on every machine.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import Grid
from .preprocess import blur, normalise
from .transforms import BSpline


def phantom_labels(grid: Grid, n_labels: int = 30, seed: int = 0, relax: int = 5) -> torch.Tensor:
    """An integer label map ``[1, 1, nz, ny, nx]``: 0 outside a head-sized ellipsoid centred on the
    grid, labels 1..n_labels-1 as Voronoi cells of random points inside it (world mm), made
    compact by ``relax`` Lloyd iterations."""
    rng = np.random.default_rng(seed)
    points = grid.world_points(dtype=torch.float64)
    extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing)
    radii = torch.as_tensor(np.minimum(extent * 0.38, [70.0, 85.0, 65.0]))
    # ellipsoid axes along the grid's own axes, so any orientation of the grid holds the phantom
    local = (points - torch.as_tensor(grid.center)) @ torch.as_tensor(grid.direction_matrix)
    inside = ((local / radii) ** 2).sum(-1) <= 1
    seeds = torch.as_tensor(rng.uniform(-0.8, 0.8, size=(n_labels - 1, 3)) * radii.numpy())
    brain = local[inside]
    for _ in range(relax):  # Lloyd relaxation: compact cells of similar size, like brain structures
        owner = torch.cdist(brain, seeds).argmin(dim=1)
        counts = torch.bincount(owner, minlength=len(seeds)).clamp(min=1)[:, None]
        sums = torch.zeros_like(seeds).index_add_(0, owner, brain)
        seeds = torch.where(counts > 1, sums / counts, seeds)
    flat = local.reshape(-1, 3)  # nearest seed in chunks: a 1 mm head grid has millions of voxels
    cells = torch.cat([torch.cdist(part, seeds).argmin(dim=1) for part in flat.split(1 << 20)]).reshape(grid.shape) + 1
    labels = torch.where(inside, cells, torch.zeros_like(cells))
    return labels[None, None].to(torch.int32)


def smooth_noise(grid: Grid, control_spacing: float, amplitude: float, seed: int) -> torch.Tensor:
    """A smooth random 3-vector field ``[1, 3, nz, ny, nx]`` (float64): the cubic B-spline of
    N(0, amplitude^2) values on a ``control_spacing`` mm control grid."""
    return random_bspline(grid, control_spacing, amplitude, seed).displacement(grid)


def random_bspline(grid: Grid, control_spacing: float, sigma: float, seed: int) -> BSpline:
    """A B-spline transform with control displacements N(0, sigma^2) mm on each axis."""
    control = BSpline.control_grid_for(grid, control_spacing)
    gen = torch.Generator().manual_seed(seed)
    return BSpline(control, torch.randn(1, 3, *control.shape, generator=gen, dtype=torch.float64) * sigma)


def render(labels: torch.Tensor, grid: Grid, seed: int = 0, noise: float = 0.02, bias: float = 0.15) -> torch.Tensor:
    """A contrast of a label map: random intensity per label in [0.1, 1] (background 0), a smooth
    multiplicative bias field and Gaussian noise; float32 ``[1, 1, nz, ny, nx]``."""
    rng = np.random.default_rng(seed)
    n = int(labels.max()) + 1
    means = torch.as_tensor(np.concatenate([[0.0], rng.uniform(0.1, 1.0, n - 1)]))
    image = means[labels.long()]
    field = smooth_noise(grid, 60.0, bias, seed + 1)[:, :1]
    gen = torch.Generator().manual_seed(seed + 2)
    image = image * torch.exp(field) + noise * torch.randn(image.shape, generator=gen, dtype=torch.float64)
    return (image * (labels > 0)).to(torch.float32)


def training_grid(size: int, spacing: float, center=(0.0, 0.0, 0.0)) -> Grid:
    """A ``size``-cubed axis-aligned grid of ``spacing`` mm centred on ``center`` (world LPS)."""
    origin = np.asarray(center, dtype=float) - spacing * (size - 1) / 2
    return Grid((size,) * 3, (spacing,) * 3, tuple(origin), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def smooth_field(grid: Grid, spacing: float, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """A smooth random 3-vector field ``[1, 3, nz, ny, nx]`` (float32, mm): the cubic B-spline of
    N(0, sigma^2) control displacements ``spacing`` mm apart, drawn from ``gen``."""
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
    local = points - center + smooth_field(grid, 40.0, float(u(2, 8)), gen).movedim(1, -1)
    r = (local / radii).norm(dim=-1)[:, None]
    n = int(u(6, 17))
    noise = torch.cat([smooth_field(grid, float(u(12, 30)), 1.0, gen) for _ in range((n + 2) // 3)], dim=1)[:, :n]
    labels = noise.argmax(dim=1, keepdim=True) + 2
    rim = float(u(0.88, 0.95))
    labels = torch.where(r > rim, torch.ones_like(labels), labels)
    return torch.where(r > 1, torch.zeros_like(labels), labels)


def render_contrast(
    labels: torch.Tensor, grid: Grid, gen: torch.Generator, means: torch.Tensor | None = None
) -> torch.Tensor:
    """One random MRI-like contrast of a label map: a random intensity per label (background dark;
    or the given ``means`` per label), partial-volume blur, thick slices along a random axis, a
    smooth bias field, noise and a gamma change, normalised as ``regode register`` normalises its
    inputs. ``[1, 1, nz, ny, nx]`` float32."""
    u = lambda lo, hi: float(lo + (hi - lo) * torch.rand(1, generator=gen))  # noqa: E731
    if means is None:
        means = torch.rand(int(labels.max()) + 1, generator=gen)
        means[0] = u(0.0, 0.1) if torch.rand(1, generator=gen) < 0.2 else 0.0
    image = means[labels.long()] + 0.03 * torch.randn(labels.shape, generator=gen) * (labels > 0)
    return normalise(acquire(image, grid, gen))


def acquire(
    image: torch.Tensor,
    grid: Grid,
    gen: torch.Generator,
    blur_max: float = 1.0,
    thick_max: float = 2.0,
    bias_max: float = 0.2,
) -> torch.Tensor:
    """What a scanner does to an ideal image (voxels of ``grid``): a blur of U(0.3, ``blur_max``)
    voxels, thicker slices (up to ``thick_max``) along one random axis, a smooth bias field of up
    to ``bias_max`` (log), noise and a gamma change, drawn from ``gen``."""
    u = lambda lo, hi: float(lo + (hi - lo) * torch.rand(1, generator=gen))  # noqa: E731
    sigmas = [u(0.3, blur_max)] * 3
    sigmas[int(torch.randint(3, (1,), generator=gen))] = u(0.3, thick_max)
    image = blur(image, sigmas)
    image = image * torch.exp(smooth_field(grid, 80.0, u(0.0, bias_max), gen)[:, :1])
    image = image.clamp(min=0) + u(0.0, 0.04) * torch.randn(image.shape, generator=gen).abs()
    return image ** float(np.exp(u(-0.3, 0.3)))
