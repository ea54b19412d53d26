"""Configurations of the content encoder (the translation model) and of its training. No torch
here (see regode.config): the command line reads its defaults from these classes."""

from __future__ import annotations

from dataclasses import dataclass

from .. import config as check
from ..options import group, setting, validate

MODALITIES = ("t1", "t1c", "t2", "flair")


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the translation model (saved in every checkpoint)."""

    kind: str = setting(
        "encoder",
        "The content encoder (its training is regode train --model encoder).",
        flag="--model",
        choices=("encoder",),
    )
    modalities: tuple[str, ...] = setting(
        MODALITIES, "The modality one-hot codes, in this order (contrast names of the benchmark layout).", flag=""
    )
    slices: int = setting(5, "Adjacent slices stacked as input channels (odd).", low=1)
    width: int = setting(16, "Channels of the first conv layer.", low=1)
    content: int = setting(32, "Content feature channels (half resolution).", low=1)
    style: int = setting(8, "Style vector length.", low=1)
    blocks: int = setting(2, "Residual blocks in the content encoder and in the generator.", low=1)
    spacing: float = setting(
        2.0, "The spacing of the slices the model is trained on (and expects).", unit="mm", low=0, above=True
    )

    def __post_init__(self):
        object.__setattr__(self, "modalities", tuple(self.modalities))
        validate(self)
        check.require(
            bool(self.modalities) and len(set(self.modalities)) == len(self.modalities),
            "modalities must be distinct names",
        )
        check.require(self.slices % 2 == 1, "slices must be an odd number")


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Everything that defines an encoder training run (saved in every checkpoint)."""

    model: EncoderConfig = group(EncoderConfig)
    data: str | None = setting(
        None,
        "Dataset folder DIR/<subject>/<contrast>.nii.gz (co-registered contrasts); default: synthetic subjects.",
        path=True,
    )
    generator: str = setting(
        "heads",
        "Synthetic subjects: heads (random head-shaped label maps) or brain (brain-like subjects).",
        choices=check.GENERATORS,
    )
    steps: int = setting(6000, "Optimiser steps (with --resume: the saved run's, or this).", low=1)
    batch: int = setting(4, "Slab pairs per step.", low=1)
    lr: float = setting(1e-4, "Adam's learning rate.", low=0, above=True)
    size: int = setting(96, "Subjects are SIZE^3 voxels at the model's spacing; slabs are SIZE x SIZE.", low=16)
    reuse: int = setting(4, "Steps that share one subject (generating a head costs more than a step).", low=1)
    seed: int = setting(0, "Seed of the initial weights and of the data.")
    lambda_image: float = setting(10.0, "Weight of the image reconstruction L1.", low=0)
    lambda_cross: float = setting(10.0, "Weight of the cross-translation L1.", low=0)
    lambda_cycle: float = setting(10.0, "Weight of the cycle L1.", low=0)
    lambda_content: float = setting(1.0, "Weight of the content reconstruction L1.", low=0)
    lambda_style: float = setting(1.0, "Weight of the style reconstruction L1.", low=0)
    lambda_shared: float = setting(1.0, "Weight of the shared-content term (one content for both contrasts).", low=0)
    lambda_adv: float = setting(1.0, "Weight of the adversarial term (a least-squares GAN).", low=0)
    lambda_basin: float = setting(
        0.0, "Weight of the capture-range term: content distance growing with misalignment (0: off).", low=0
    )
    basin_motions: int = setting(3, "Basin term: moved copies of the slabs per step (fractions of one motion).", low=1)
    basin_angle: float = setting(
        180.0, "Basin term: the largest rotation of its motions (about a random axis).", unit="degrees", low=0
    )
    basin_shift: float = setting(40.0, "Basin term: the largest shift of its motions.", unit="mm", low=0)
    basin_margin: float = setting(2.0, "Basin term: the least rise of log d per unit of motion fraction.", low=0)
    checkpoint_every: int = setting(100, "Steps between checkpoints.", low=1)
    validate_every: int = setting(250, "Steps between validations.", low=1)
    val_batches: int = setting(4, "Validation batches.", low=1)

    def __post_init__(self):
        validate(self)
