"""Content features of volumes for registration: E3D, the content distance and dense feature
volumes (the hand-made MIND descriptor they are compared with is in regode.losses).

E3D (paper section 2.2): the 2D content encoder applied to stacks of adjacent slices at N slice
positions along each of the three axes. The positions are drawn with a seeded generator inside
the reference (fixed) image's head, so the same seed gives the same positions and the same
features; the distance compares two volumes on one grid at the same positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import checkpoint
from ..errors import RegodeError
from ..preprocess import blur
from .data import SLAB_HEAD, cut_slabs
from .networks import ContentEncoder, EncoderConfig, Translator

FORMAT = "regode.encoder"
"""the checkpoint format of content-encoder model files (regode.checkpoint)."""

SMOOTH = 1.0
"""voxels: the Gaussian applied to a volume before it is encoded. Without it the features react
to the blur that resampling itself adds (none at whole-voxel shifts, most at half-voxel ones), so
the distance dips and jumps at grid-aligned positions instead of following the misalignment."""


def slice_positions(
    reference: torch.Tensor, count: int, seed: int = 0, threshold: float = SLAB_HEAD
) -> list[torch.Tensor]:
    """``count`` slice indices along each tensor axis (z, y, x) of ``reference [1, 1, nz, ny, nx]``,
    drawn without replacement among the slices whose head area is at least a third of the largest
    (all slices if the image is empty)."""
    gen = torch.Generator().manual_seed(seed)
    mask = reference[0, 0] > threshold
    out = []
    for axis in range(3):
        area = mask.movedim(axis, 0).flatten(1).sum(1).float()
        candidates = (
            torch.nonzero(area >= area.max() / 3).flatten() if area.max() > 0 else torch.arange(mask.shape[axis])
        )
        pick = torch.randperm(candidates.numel(), generator=gen)[:count]
        out.append(candidates[pick].sort().values)
    return out


def e3d(
    encoder: ContentEncoder, volume: torch.Tensor, positions: list[torch.Tensor], slices: int
) -> list[torch.Tensor]:
    """E3D of ``volume [1, 1, nz, ny, nx]``: per axis, the content features ``[N, C, h', w']`` of the
    slab stacks centred at ``positions`` (from :func:`slice_positions`), after :data:`SMOOTH`."""
    volume = blur(volume, [SMOOTH] * 3)
    return [encoder(cut_slabs(volume, 2 + axis, pos.tolist(), slices)) for axis, pos in enumerate(positions)]


def content_distance(
    encoder: ContentEncoder, moved: torch.Tensor, fixed: torch.Tensor, count: int = 8, seed: int = 0, slices: int = 5
) -> torch.Tensor:
    """``||E3D(moved) - E3D(fixed)||^2`` (mean over features and axes) for volumes on one grid;
    the slice positions are drawn in ``fixed``. Differentiable with respect to ``moved``."""
    positions = slice_positions(fixed, count, seed)
    with torch.no_grad():
        fixed_features = e3d(encoder, fixed, positions, slices)
    return e3d_distance(e3d(encoder, moved, positions, slices), fixed_features)


def e3d_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared difference of two E3Ds (per axis, then averaged over the three axes)."""
    return sum((x - y).square().mean() for x, y in zip(a, b, strict=False)) / 3


@torch.no_grad()
def content_volume(encoder: ContentEncoder, volume: torch.Tensor, slices: int, chunk: int = 32) -> torch.Tensor:
    """Dense content features ``[1, C, nz, ny, nx]``: every slice position along each axis encoded,
    brought back to full resolution (bilinear), averaged over the three axes (after :data:`SMOOTH`)."""
    volume = blur(volume, [SMOOTH] * 3)
    shape = volume.shape[2:]
    total = None
    for axis in range(3):
        n = shape[axis]
        parts = []
        for start in range(0, n, chunk):
            feats = encoder(cut_slabs(volume, 2 + axis, list(range(start, min(n, start + chunk))), slices))
            plane = [s for i, s in enumerate(shape) if i != axis]
            parts.append(
                F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)[..., : plane[0], : plane[1]]
            )
        stack = torch.cat(parts).movedim(0, axis + 1)[None]  # [1, C, ...] with the slice axis back in place
        total = stack if total is None else total + stack
    return total / 3


def load_encoder(path=None, spacing: float | None = None) -> tuple[Translator, dict]:
    """The translation model in ``path`` (None: the shipped ``weights/encoder.pt``; eval mode) and
    its checkpoint document. With ``spacing`` (mm), an encoder trained at another spacing is refused:
    its features are not scale-invariant."""
    path = path or checkpoint.weights_dir() / "encoder.pt"
    model, document = checkpoint.load_network(path, FORMAT, "encoder", EncoderConfig, Translator)
    trained = model.config.spacing
    if spacing is not None and abs(trained - spacing) > 0.01 * spacing:
        raise RegodeError(
            f"{path} was trained on {trained:g} mm slices, the images are registered at {spacing:g} mm (use "
            f"--spacing {trained:g})"
        )
    return model, document
