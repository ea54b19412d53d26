"""Registration from files to files: ``regode register`` and ``regode fit-field`` read the images,
run their method (regode.odenet, regode.nir) and write ANTs-named outputs at the fixed image's full
resolution, with the resolved config, model hashes and timings in ``PREFIXregode.json``.

A registration result (regode.result) is the fixed -> moving mapping ``linear(field(x))``: ANTs'
``-t PREFIX1Warp.nii.gz -t PREFIX0GenericAffine.mat``.
"""

from __future__ import annotations

import copy
import json
import platform
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .checkpoint import file_hash
from .errors import RegodeError
from .heads import Stripped, brain_paths, candidates, strip
from .io import Image, read_image, save_transform, write_image
from .io.atomic import StagedOutputs, check_outputs
from .nir.config import FitConfig
from .nir.fit import fit_images
from .odenet.config import RegisterConfig
from .odenet.kinds import KINDS
from .odenet.register import load_models, register_images
from .qc import assess
from .result import Result
from .templates import is_template, read_template
from .transforms import Compose, DisplacementField
from .warp import resample_many


def output_paths(prefix: str | Path, deformable: bool, labels: bool, qc: bool = True) -> dict[str, Path]:
    """ANTs' names after ``prefix``, and regode's: the JSON record (written last: its presence
    means the others are complete) and the QC picture."""
    names = {"affine": "0GenericAffine.mat", "warped": "Warped.nii.gz", "inverse_warped": "InverseWarped.nii.gz"}
    if qc:
        names["qc"] = "qc.png"
    if deformable:
        names.update(warp="1Warp.nii.gz", inverse_warp="1InverseWarp.nii.gz")
    if labels:
        names["labels"] = "WarpedLabels.nii.gz"
    names["json"] = "regode.json"
    return {k: Path(str(prefix) + v) for k, v in names.items()}


def bids_paths(folder: Path, entities: str, source: str, target: str, labels: bool, qc: bool = True) -> dict[str, Path]:
    """NiPreps-style names in ``folder`` for the registration of ``source`` (the moving image's
    label, e.g. ``FLAIR``) to ``target`` (``T1w``) of ``entities`` (``sub-01_ses-1``): the mapping
    as one ITK composite (``*_from-FLAIR_to-T1w_mode-image_xfm.h5``, the affine then the warp, as
    ANTs' ``-t 1Warp -t 0GenericAffine``) and its inverse, the images in each other's space, and the
    record (``*_desc-regode.json``, written last)."""
    pair = f"{entities}_from-{source}_to-{target}"
    names = {
        "xfm": f"{pair}_mode-image_xfm.h5",
        "inverse_xfm": f"{entities}_from-{target}_to-{source}_mode-image_xfm.h5",
        "warped": f"{entities}_space-{target}_{source}.nii.gz",
        "inverse_warped": f"{entities}_space-{source}_{target}.nii.gz",
    }
    if labels:
        names["labels"] = f"{entities}_space-{target}_desc-{source}_dseg.nii.gz"
    if qc:
        names["qc"] = f"{pair}_desc-qc.png"
    names["json"] = f"{pair}_desc-regode.json"
    return {k: Path(folder) / v for k, v in names.items()}


def read_inputs(
    fixed_path, moving_path, moving_labels, paths: dict[str, Path], other_inputs=()
) -> tuple[Image, Image, Image | None]:
    """Check every output can be written and is none of the inputs (``other_inputs``: transform
    specs, model files), then read the images (one clear error otherwise)."""
    check_outputs(paths.values(), [fixed_path, moving_path, moving_labels, *other_inputs])
    fixed = read_template(fixed_path) if is_template(fixed_path) else read_image(fixed_path, what="fixed image")
    moving = read_template(moving_path) if is_template(moving_path) else read_image(moving_path, what="moving image")
    labels = None
    if moving_labels is not None:
        labels = read_image(moving_labels, what="moving label image", exact=True)
        if not labels.grid.same_as(moving.grid):
            raise RegodeError(
                f"moving label image {moving_labels} is not on the moving image's grid (size, spacing, "
                f"origin, direction)"
            )
    return fixed, moving, labels


def read_masks(config) -> tuple[Image | None, Image | None]:
    """The run's ``--fixed-mask`` and ``--moving-mask`` images (or None)."""
    return tuple(
        read_image(path, what=what) if path else None
        for path, what in ((config.fixed_mask, "fixed mask"), (config.moving_mask, "moving mask"))
    )


def write_outputs(
    result: Result,
    fixed: Image,
    moving: Image,
    labels: Image | None,
    paths: dict[str, Path],
    document: dict,
    inverse_iterations: int = 30,
    start: float | None = None,
    stripped: Stripped | None = None,
) -> None:
    """Write the transforms, the warped images (and labels) and the JSON ``document`` (with the
    result's statistics, and the wall time since ``start`` (``time.perf_counter()``), added)
    under ``paths`` (all in one folder); ``stripped``: the brains of heads registered brain to
    brain (regode.heads), whose masks and brains are written too. Each file is written in the
    background as soon as it is computed, into a private folder, and the files are moved into
    place together once every one is written: a failure anywhere leaves none of them."""
    t0 = time.perf_counter()
    grid = fixed.grid
    extracted = stripped.extracted if stripped is not None else {}
    with StagedOutputs(paths["json"].parent) as staged:
        chain, inverse_chain = _write_transforms(staged, result, grid, paths, inverse_iterations)
        # the labels lie on the moving grid (read_inputs checks): one pass of mapped points for all
        moved = [(moving.data, "linear")] + ([(labels.data, "label")] if labels is not None else [])
        if "moving" in extracted:
            moved.append((extracted["moving"], "linear"))
        warped, *rest = resample_many(moved, moving.grid, grid, Compose(chain))
        staged.write(paths["warped"], lambda path: write_image(warped, grid, path, np.float32))
        if labels is not None:
            warped_labels = rest.pop(0)
            staged.write(paths["labels"], lambda path: write_image(warped_labels, grid, path, labels.dtype))
        if "moving" in extracted:
            _write_brain(staged, paths, "", extracted["moving"], moving.grid, warped, rest[0], grid)
        quality: dict = {}
        qc = None
        if "qc" in paths:  # figures and picture made on a thread of their own, while the rest is computed and written
            title = paths["json"].name.rsplit("regode", 1)[0].rstrip("_-")
            # a head registered brain to brain is judged by its brain
            pair = (fixed, moving, warped) if stripped is None else (stripped.fixed, stripped.moving, warped)
            if "moving" in extracted:
                pair = (stripped.fixed, stripped.moving, warped * (rest[0] > 0.5))
            qc = threading.Thread(target=_quality, args=(quality, *pair, result, title), name="regode-qc", daemon=True)
            qc.start()
        back = [(fixed.data, "linear")] + ([(extracted["fixed"], "linear")] if "fixed" in extracted else [])
        inverse_warped, *inverse_rest = resample_many(back, fixed.grid, moving.grid, Compose(inverse_chain))
        staged.write(paths["inverse_warped"], lambda path: write_image(inverse_warped, moving.grid, path, np.float32))
        if "fixed" in extracted:
            _write_brain(
                staged,
                paths,
                "fixed_",
                extracted["fixed"],
                grid,
                inverse_warped,
                inverse_rest[0],
                moving.grid,
                "inverse_warped_",
            )
        result.stats.setdefault("timings_s", {})["outputs"] = time.perf_counter() - t0
        _finish(staged, paths, document, result, qc, quality, start)
    for path in stripped.obsolete if stripped is not None else ():
        Path(path).unlink(missing_ok=True)


def _write_transforms(staged: StagedOutputs, result: Result, grid, paths: dict, inverse_iterations: int):
    """Write the affine and the warps (or the ITK composites of BIDS-style names); the fixed ->
    moving chain and its inverse."""
    linear = result.linear
    chain, inverse_chain = [linear], [linear.inverse()]
    if "affine" in paths:
        staged.write(paths["affine"], lambda path: save_transform(linear, path))
    if result.field is not None:
        # float32 copies (the caller's result keeps its precision): the files' precision, and
        # twice as fast at 1 mm
        work = copy.deepcopy(result.field).float()
        forward = DisplacementField(grid, work.displacement(grid))
        inverse_work = (
            copy.deepcopy(result.inverse_field).float()
            if result.inverse_field is not None
            else work.inverse(inverse_iterations)
        )
        inverse = DisplacementField(grid, inverse_work.displacement(grid))
        if "warp" in paths:
            staged.write(paths["warp"], lambda path: save_transform(forward, path))
            staged.write(paths["inverse_warp"], lambda path: save_transform(inverse, path))
        chain.append(forward)
        inverse_chain.insert(0, inverse)
    if "xfm" in paths:  # the whole mapping and its inverse as ITK composites (BIDS-style names)
        staged.write(paths["xfm"], lambda path: save_transform(Compose(chain), path))
        staged.write(paths["inverse_xfm"], lambda path: save_transform(Compose(inverse_chain), path))
    return chain, inverse_chain


def _write_brain(staged, paths, side: str, mask, grid, head, moved_mask, other_grid, warped: str = "warped_") -> None:
    """Write a head's brain mask (on ``grid``), and its mask and brain moved onto ``other_grid``
    (``head``, ``moved_mask``: the head and the mask resampled there; the brain is the head inside
    the mask, as the brain that was registered is the head times its mask)."""
    brain_mask = (moved_mask > 0.5).to(head.dtype)
    brain = head * brain_mask
    staged.write(paths[f"{side}brain_mask" if side else "brain_mask"], lambda p: write_image(mask, grid, p, np.uint8))
    staged.write(paths[f"{warped}brain"], lambda p: write_image(brain, other_grid, p, np.float32))
    staged.write(paths[f"{warped}brain_mask"], lambda p: write_image(brain_mask, other_grid, p, np.uint8))


def _finish(staged, paths, document, result, qc, quality, start) -> None:
    """Complete the record (statistics, QC figures, wall time), write it last and commit."""
    document.update(
        {
            "outputs": {k: str(v) for k, v in paths.items()},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
            **result.stats,
        }
    )
    waited = time.perf_counter()
    if qc is not None:
        qc.join()
        if "png" in quality:
            staged.write(paths["qc"], lambda path: Path(path).write_bytes(quality.pop("png")))
    staged.wait()  # every image written: the JSON records the wall time up to here
    document["timings_s"]["writing_after_outputs"] = time.perf_counter() - waited
    document.update({k: v for k, v in quality.items() if k != "png"})
    if start is not None:
        document["timings_s"]["wall"] = time.perf_counter() - start
    staged.write(paths["json"], lambda path: Path(path).write_text(json.dumps(document, indent=2)))
    staged.commit()


def _quality(into: dict, fixed: Image, moving: Image, warped: torch.Tensor, result: Result, title: str) -> None:
    """Measure the QC figures (``into["qc"]``, with their time) and draw the picture (``into["png"]``).
    Best effort: a failure here is recorded (``qc_error``) and costs the registration nothing."""
    t0 = time.perf_counter()
    try:
        into["qc"], render = assess(fixed.data, moving.data, warped, fixed.grid, moving.grid, result, title)
        into["png"] = render()
    except Exception as exc:  # noqa: BLE001 - QC must never lose a registration
        into["qc_error"] = f"{type(exc).__name__}: {exc}"
    into["qc_seconds"] = time.perf_counter() - t0


def _document(command: str, fixed_path, moving_path, moving_labels, config, brains: Stripped) -> dict:
    fixed, moving = channels(fixed_path), channels(moving_path)
    return {
        "regode": __version__,
        "command": command,
        "fixed": fixed[0],
        "moving": moving[0],
        "channels": [{"fixed": f, "moving": m} for f, m in zip(fixed, moving, strict=True)],
        "moving_labels": str(moving_labels) if moving_labels else None,
        "config": asdict(config),
        "skull_strip": brains.record,
    }


def register_files(
    fixed_path,
    moving_path,
    prefix,
    config: RegisterConfig,
    moving_labels=None,
    qc: bool = True,
    models: dict | None = None,
    paths: dict | None = None,
    record: dict | None = None,
) -> dict:
    """``regode register``: read, register with MS-ODENet, and write ANTs-named outputs at the fixed
    image's full resolution (or ``paths``, e.g. :func:`bids_paths`); returns the JSON record
    (with ``record``'s entries, such as each setting's source, added). ``fixed_path`` and
    ``moving_path``: one file each, or one per channel in the same order (the outputs are the first
    channel's, as ANTs warps its first metric's images)."""
    start = time.perf_counter()
    paths = paths or output_paths(prefix, not KINDS[config.stages[-1]].linear, moving_labels is not None, qc)
    models = models if models is not None else load_models(config)
    fixed, moving, labels, brains = _read_pair(
        fixed_path, moving_path, moving_labels, paths, config, [str(p) for _, p in models.values()]
    )
    read_s = time.perf_counter() - start
    result = register_images(brains.fixed, brains.moving, config, models, brains.masks, brains.channels)
    result.stats["timings_s"]["read"] = read_s
    document = {**_document("register", fixed_path, moving_path, moving_labels, config, brains), **(record or {})}
    document["models"] = {
        kind: {"path": str(p), "sha256": file_hash(p), "config": asdict(m.config)} for kind, (m, p) in models.items()
    }
    write_outputs(result, fixed, moving, labels, _with_brains(paths, brains), document, config.inverse_iterations,
                  start, brains)  # fmt: skip
    return document


def channels(paths) -> list[str]:
    """One image path, or one per channel, as a list of strings."""
    return [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]


def _read_pair(fixed_path, moving_path, moving_labels, paths: dict, config, other_inputs: list):
    """Read the pair (each channel's), its labels and masks (every output, the brain extraction's
    that may be written included, checked first), and extract the brains that ``--skull-strip``
    asks for (another channel of a head keeps what lies inside its first channel's brain)."""
    fixed_paths, moving_paths = channels(fixed_path), channels(moving_path)
    if len(fixed_paths) != len(moving_paths):
        raise RegodeError(
            f"{len(fixed_paths)} fixed and {len(moving_paths)} moving images: one moving image per fixed channel"
        )
    sides = candidates(fixed_paths[0], moving_paths[0], config)
    fixed, moving, labels = read_inputs(
        fixed_paths[0],
        moving_paths[0],
        moving_labels,
        {**paths, **brain_paths(_prefix(paths), ("fixed", "moving"))},  # what this run writes, or removes
        [*config.initial_transform, *other_inputs, config.fixed_mask, config.moving_mask, *fixed_paths[1:],
         *moving_paths[1:]],
    )  # fmt: skip
    more = [
        (_read_channel(f, "fixed", c), _read_channel(m, "moving", c))
        for c, (f, m) in enumerate(zip(fixed_paths[1:], moving_paths[1:], strict=True), start=2)
    ]
    t0 = time.perf_counter()
    brains = strip(fixed, moving, read_masks(config), config, sides)
    brains.channels = tuple(
        tuple(_inside(image, brains.extracted.get(side), first.grid) for image, side, first in
              zip(pair, ("fixed", "moving"), (fixed, moving), strict=True))
        for pair in more
    )  # fmt: skip
    brains.record["sides_considered"] = list(sides)
    brains.record["seconds"] = time.perf_counter() - t0
    # an earlier run's extraction outputs at this prefix that this run does not write
    unused = [side for side in ("fixed", "moving") if side not in brains.extracted]
    brains.obsolete = list(brain_paths(_prefix(paths), unused).values())
    return fixed, moving, labels, brains


def _read_channel(path: str, side: str, number: int) -> Image:
    what = f"{side} image (channel {number})"
    return read_template(path) if is_template(path) else read_image(path, what=what)


def _inside(image: Image, mask, grid) -> Image:
    """``image`` inside a brain ``mask`` given on ``grid`` (world space: resampled onto the image's
    grid); ``image`` itself without a mask."""
    if mask is None:
        return image
    if not grid.same_as(image.grid):
        mask = resample_many([(mask, "linear")], grid, image.grid, Compose([]))[0]
    return Image(image.data * (mask > 0.5).to(image.data.dtype), image.grid, image.dtype, image.path)


def _prefix(paths: dict) -> str:
    """The prefix of a run's outputs: its record's name without ``regode.json``."""
    return str(paths["json"])[: -len("regode.json")]


def _with_brains(paths: dict, brains: Stripped) -> dict:
    """``paths`` with the outputs of the heads extracted (before the record, written last)."""
    extra = brain_paths(_prefix(paths), list(brains.extracted))
    return {**{k: v for k, v in paths.items() if k != "json"}, **extra, "json": paths["json"]}


def fit_files(
    fixed_path,
    moving_path,
    prefix,
    config: FitConfig,
    moving_labels=None,
    progress: bool = False,
    qc: bool = True,
    paths: dict | None = None,
    record: dict | None = None,
) -> dict:
    """``regode fit-field``: read, fit neural fields, and write ANTs-named outputs at the fixed
    image's full resolution; returns the JSON record (with ``record``'s entries added)."""
    start = time.perf_counter()
    paths = paths or output_paths(prefix, True, moving_labels is not None, qc)
    if len(channels(fixed_path)) > 1 or len(channels(moving_path)) > 1:
        raise RegodeError("fit-field registers one channel: give one --fixed and one --moving (several: register)")
    fixed, moving, labels, brains = _read_pair(fixed_path, moving_path, moving_labels, paths, config, [config.encoder])
    read_s = time.perf_counter() - start
    result = fit_images(brains.fixed, brains.moving, config, progress, brains.masks)
    result.stats["timings_s"]["read"] = read_s
    document = {**_document("fit-field", fixed_path, moving_path, moving_labels, config, brains), **(record or {})}
    write_outputs(result, fixed, moving, labels, _with_brains(paths, brains), document, config.inverse_iterations,
                  start, brains)  # fmt: skip
    return document
