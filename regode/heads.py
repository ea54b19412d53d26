"""Heads and brains: ``regode brain-extract``, and the skull stripping of ``register`` and
``fit-field`` (``--skull-strip``), which register brain to brain and write transforms that apply
to the head.

How ``--skull-strip auto`` decides: an image is a brain when it is a template (``mni152`` ships
brain-extracted) or named one (``--fixed-is-brain``, ``--moving-is-brain``). When exactly one of
the two is a brain, the other is extracted (deepbet, regode.brain) and kept as a head if its
bright voxels outside the brain mask fill more than a quarter of the brain's volume
(:func:`regode.brain.is_head`); an image that turns out to be an extracted brain already is
registered as it is. With two heads or two brains, auto extracts nothing. ``yes`` extracts every
image not named a brain, without the test; ``no`` never extracts.

A head that is extracted is registered as its brain (the head times the mask), and its mask limits
the similarity to the brain (with ``--fixed-mask`` or ``--moving-mask``, to both masks'
overlap). The transforms map world points, so they apply to the head as they do to the brain.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .brain import extract, is_head, volume_ml
from .config import BrainExtractConfig
from .device import resolve_device
from .errors import RegodeError
from .io import Image, read_image, write_image
from .io.atomic import StagedOutputs, check_outputs
from .preprocess import normalise
from .qc import mask_picture
from .templates import is_template


def extraction_paths(prefix, qc: bool = True) -> dict[str, Path]:
    """``regode brain-extract``'s outputs after ``prefix``: antsBrainExtraction.sh's names, the QC
    picture and the JSON record (written last)."""
    names = {"brain": "BrainExtractionBrain.nii.gz", "mask": "BrainExtractionMask.nii.gz"}
    if qc:
        names["qc"] = "qc.png"
    names["json"] = "regode.json"
    return {k: Path(str(prefix) + v) for k, v in names.items()}


def extract_files(
    input_path,
    prefix,
    config: BrainExtractConfig,
    qc: bool = True,
    paths: dict | None = None,
    record: dict | None = None,
) -> dict:
    """``regode brain-extract``: read the head, extract its brain, write the brain and the mask on
    the head's grid, the QC picture and the record (with the brain's volume in mL); all the
    files appear together or none does (``paths``: other names than :func:`extraction_paths`'s, a
    cohort's). Returns the record."""
    start = time.perf_counter()
    paths = {k: v for k, v in (paths or extraction_paths(prefix, qc)).items() if k != "error"}
    check_outputs(paths.values(), [input_path])
    if config.threads:
        torch.set_num_threads(config.threads)
    image = read_image(input_path, what="T1 image")
    t0 = time.perf_counter()
    mask = extract(image, config.threshold, resolve_device(config.device))
    seconds = time.perf_counter() - t0
    head, share = is_head(image, mask)
    document = {
        "regode": __version__,
        "command": "brain-extract",
        "input": str(input_path),
        "config": asdict(config),
        **(record or {}),
        "outputs": {k: str(v) for k, v in paths.items()},
        "brain_volume_ml": volume_ml(mask, image.grid),
        "head": head,
        "outside_share": share,
        "threads": torch.get_num_threads(),
    }
    document["qc"] = {"brain_volume_ml": document["brain_volume_ml"]}  # a cohort's summary and outliers
    with StagedOutputs(paths["json"].parent) as staged:
        staged.write(paths["brain"], lambda p: write_image(image.data * mask, image.grid, p, image.dtype))
        staged.write(paths["mask"], lambda p: write_image(mask, image.grid, p, np.uint8))
        if "qc" in paths:
            title = (
                f"{paths['json'].name.rsplit('regode', 1)[0].rstrip('_-')}: brain {document['brain_volume_ml']:.0f} mL"
            )
            png = mask_picture(normalise(image.data)[0, 0].numpy(), mask[0, 0].numpy(), image.grid, title)
            staged.write(paths["qc"], lambda p: Path(p).write_bytes(png))
        staged.wait()
        document["timings_s"] = {"extraction": seconds, "wall": time.perf_counter() - start}
        staged.write(paths["json"], lambda p: Path(p).write_text(json.dumps(document, indent=2)))
        staged.commit()
    return document


BRAIN_OUTPUTS = {
    "moving": {
        "brain_mask": "BrainMask.nii.gz",
        "warped_brain": "WarpedBrain.nii.gz",
        "warped_brain_mask": "WarpedBrainMask.nii.gz",
    },
    "fixed": {
        "fixed_brain_mask": "FixedBrainMask.nii.gz",
        "inverse_warped_brain": "InverseWarpedBrain.nii.gz",
        "inverse_warped_brain_mask": "InverseWarpedBrainMask.nii.gz",
    },
}
"""the outputs of a registration whose moving (or fixed) image was a head, after its prefix: the
head's brain mask (on the head's grid), its brain and its mask in the other image's space."""


def candidates(fixed_spec, moving_spec, config) -> tuple[str, ...]:
    """The sides (``fixed``, ``moving``) that ``config.skull_strip`` may extract, before the images
    are read: their outputs are checked with the others."""
    brains = {
        "fixed": _named_brain(fixed_spec, config.fixed_is_brain),
        "moving": _named_brain(moving_spec, config.moving_is_brain),
    }
    if config.skull_strip == "no":
        return ()
    if config.skull_strip == "yes":
        return tuple(side for side, brain in brains.items() if not brain)
    return tuple(side for side, brain in brains.items() if not brain) if sum(brains.values()) == 1 else ()


def _named_brain(spec, flag: bool) -> bool:
    return bool(flag) or is_template(spec)


def brain_paths(prefix, sides) -> dict[str, Path]:
    """The extraction outputs of ``sides`` after ``prefix`` (see :data:`BRAIN_OUTPUTS`)."""
    return {k: Path(str(prefix) + v) for side in sides for k, v in BRAIN_OUTPUTS[side].items()}


@dataclass
class Stripped:
    """A pair made ready for registration: the images to register (a head's brain where one was
    extracted), the similarity masks, and each extracted head's mask on its own grid."""

    fixed: Image
    moving: Image
    masks: tuple
    extracted: dict = field(default_factory=dict)
    """side (``fixed``, ``moving``) -> the brain mask ``[1, 1, ...]`` of that head."""
    record: dict = field(default_factory=dict)
    obsolete: list = field(default_factory=list)
    """outputs of an extraction this run considered and did not make: an earlier run's, removed
    once this run's outputs are in place."""
    channels: tuple = ()
    """more ``(fixed, moving)`` image pairs (other channels of the two subjects; a head's inside its
    first channel's brain where that was extracted)."""


def strip(fixed: Image, moving: Image, masks: tuple, config, sides: tuple[str, ...]) -> Stripped:
    """Extract the brains of ``sides`` (from :func:`candidates`); under ``auto``, an image that is an
    extracted brain already is left as it is."""
    images, extracted, record = {"fixed": fixed, "moving": moving}, {}, {}
    masks = dict(zip(("fixed", "moving"), masks, strict=True))
    if sides and config.threads:
        torch.set_num_threads(config.threads)
    for side in sides:
        image = images[side]
        t0 = time.perf_counter()
        mask = extract(image, config.brain_threshold, resolve_device(config.device))
        head, share = is_head(image, mask)
        entry = {"head": head, "outside_share": share, "brain_volume_ml": volume_ml(mask, image.grid)}
        if head or config.skull_strip == "yes":
            extracted[side] = mask
            images[side] = replace(image, data=image.data * mask)
            user = masks[side]
            masks[side] = Image(mask, image.grid, np.dtype(np.uint8)) if user is None else _both(user, mask, image)
        entry["extracted"] = side in extracted
        entry["seconds"] = time.perf_counter() - t0
        record[side] = entry
    return Stripped(images["fixed"], images["moving"], (masks["fixed"], masks["moving"]), extracted, record)


def _both(user: Image, mask: torch.Tensor, image: Image) -> Image:
    """The user's mask and the brain mask together (the user's mask resampled onto the image's grid
    where it lies on another)."""
    from .transforms import Compose
    from .warp import resample

    data = (
        user.data
        if user.grid.same_as(image.grid)
        else resample(user.data, user.grid, image.grid, Compose([]), "nearest")
    )
    if data.shape[2:] != mask.shape[2:]:
        raise RegodeError("the mask does not match its image's grid")
    return Image(((data != 0) & (mask > 0.5)).float(), image.grid, np.dtype(np.uint8))
