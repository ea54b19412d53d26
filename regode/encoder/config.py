"""Configurations of the content encoder (the translation model) and of its training. No torch
here (see regode.config): the command line reads its defaults from these classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import config as check

MODALITIES = ("t1", "t1c", "t2", "flair")


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the translation model (saved in every checkpoint)."""

    modalities: tuple[str, ...] = MODALITIES
    """the modality one-hot codes, in this order (contrast names of the benchmark layout)."""
    slices: int = 5
    """adjacent slices stacked as input channels."""
    width: int = 16
    """channels of the first conv layer."""
    content: int = 32
    """content feature channels (half resolution)."""
    style: int = 8
    """style vector length."""
    blocks: int = 2
    """residual blocks in E^c and in G."""
    spacing: float = 2.0
    """mm: the spacing of the slices the model is trained on (and expects)."""

    def __post_init__(self):
        object.__setattr__(self, "modalities", tuple(self.modalities))
        check.require(bool(self.modalities) and len(set(self.modalities)) == len(self.modalities), "modalities must be distinct names")
        check.require(isinstance(self.slices, int) and self.slices >= 1 and self.slices % 2 == 1, "slices must be an odd number")
        check.at_least(self, 1, "width", "content", "style", "blocks")
        check.positive(self, "spacing")


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Everything that defines an encoder training run (saved in every checkpoint)."""

    model: EncoderConfig = field(default_factory=EncoderConfig)
    data: str | None = None
    """dataset folder (benchmark layout); None: synthetic subjects."""
    generator: str = "heads"
    """synthetic subjects: ``heads`` (random head-shaped label maps) or ``brain`` (regode.anatomy)."""
    steps: int = 6000
    batch: int = 4
    """slab pairs per step."""
    lr: float = 1e-4
    size: int = 96
    """subjects are SIZE^3 voxels at the model's spacing; slabs are SIZE x SIZE."""
    reuse: int = 4
    """steps that share one subject (generating a head costs more than a step)."""
    seed: int = 0
    lambda_image: float = 10.0
    lambda_cross: float = 10.0
    lambda_cycle: float = 10.0
    lambda_content: float = 1.0
    lambda_style: float = 1.0
    lambda_shared: float = 1.0
    lambda_adv: float = 1.0
    lambda_basin: float = 0.0
    """the basin term's weight; off by default (measured: it did not widen the capture range on BraTS, docs/encoder.md)."""
    basin_motions: int = 3
    """moved copies of the b slabs per step (fractions of one motion)."""
    basin_angle: float = 180.0
    """degrees: the largest rotation of the basin term's motions (about a random axis)."""
    basin_shift: float = 40.0
    """mm: the largest shift of the basin term's motions."""
    basin_margin: float = 2.0
    """the least rise of log d per unit of motion fraction the basin term asks for."""
    checkpoint_every: int = 100
    validate_every: int = 250
    val_batches: int = 4

    def __post_init__(self):
        check.one_of(self, "generator", check.GENERATORS)
        check.at_least(self, 1, "steps", "batch", "reuse", "basin_motions", "checkpoint_every", "validate_every", "val_batches")
        check.at_least(self, 16, "size")
        check.positive(self, "lr")
        check.at_least(self, 0, *(f"lambda_{k}" for k in ("image", "cross", "cycle", "content", "style", "shared", "adv", "basin")),
                       "basin_angle", "basin_shift", "basin_margin")
