"""What ``regode register`` and ``regode fit-field`` share: devices, working images, the starting
linear transform, and the ANTs-named outputs written at the fixed image's full resolution.

A registration result is the fixed -> moving mapping ``linear(field(x))``: ANTs'
``-t PREFIX1Warp.nii.gz -t PREFIX0GenericAffine.mat``.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import RegodeError
from .grid import Grid
from .io import Image
from .transforms import Affine, Compose, DisplacementField, Transform
from .warp import resample, resample_many


@dataclass
class Result:
    linear: Affine
    """the linear part (initial transform and rigid stage), fixed -> moving."""
    field: DisplacementField | None
    """the deformable part on the fixed working grid (applied first to fixed points), or None."""
    stats: dict
    inverse_field: DisplacementField | None = None
    """the deformable part's inverse, when the method knows it (else a fixed-point inverse)."""

    @property
    def transform(self) -> Transform:
        return Compose([self.linear, self.field]) if self.field is not None else Compose([self.linear])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RegodeError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise RegodeError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def working_image(image: Image, spacing: float, device: torch.device) -> tuple[torch.Tensor, Grid]:
    """The image on an isotropic grid of ``spacing`` mm over its own field of view, anti-aliased
    and normalised to [0, 1]."""
    from .odenet.preprocess import to_grid

    if not bool(torch.isfinite(image.data).all()):
        raise RegodeError(f"{image.path or 'image'} contains NaN or infinite values")
    if float(image.data.max()) <= float(image.data.min()):
        raise RegodeError(f"{image.path or 'image'} is constant: nothing to register")
    grid = image.grid.with_spacing(spacing)
    return to_grid(image, grid).to(device), grid


def initial_linear(specs: list[str], center_of_mass: bool, c_fix: torch.Tensor, c_mov: torch.Tensor) -> Affine:
    """The starting fixed -> moving linear map: ``specs`` (antsApplyTransforms order) if given,
    else the translation between the centres of mass, else the identity (float64)."""
    from .io import load_transform_chain

    if specs:
        linear = load_transform_chain(specs)
        if not linear.is_linear:
            raise RegodeError("--initial-transform must be linear (rigid or affine)")
        return linear.as_affine().double()
    if center_of_mass:
        return Affine(torch.eye(3, dtype=torch.float64), (c_mov.double() - c_fix.double())[None])
    return Affine(torch.eye(3, dtype=torch.float64))


def output_paths(prefix: str | Path, deformable: bool, labels: bool) -> dict[str, Path]:
    names = {"affine": "0GenericAffine.mat", "warped": "Warped.nii.gz", "inverse_warped": "InverseWarped.nii.gz",
             "json": "regode.json"}
    if deformable:
        names.update(warp="1Warp.nii.gz", inverse_warp="1InverseWarp.nii.gz")
    if labels:
        names["labels"] = "WarpedLabels.nii.gz"
    return {k: Path(str(prefix) + v) for k, v in names.items()}


def read_inputs(fixed_path, moving_path, moving_labels, paths: dict[str, Path]) -> tuple[Image, Image, Image | None]:
    """Check every output can be written, then read the images (one clear error otherwise)."""
    from .io import read_image
    from .io.atomic import check_writable

    for p in paths.values():
        check_writable(p)
    fixed = read_image(fixed_path, what="fixed image")
    moving = read_image(moving_path, what="moving image")
    labels = None
    if moving_labels is not None:
        labels = read_image(moving_labels, what="moving label image")
        if not labels.grid.same_as(moving.grid):
            raise RegodeError(f"moving label image {moving_labels} is not on the moving image's grid (size, spacing, origin, direction)")
    return fixed, moving, labels


def write_outputs(result: Result, fixed: Image, moving: Image, labels: Image | None, paths: dict[str, Path],
                  document: dict, inverse_iterations: int = 30, start: float | None = None) -> None:
    """Write the transforms, the warped images (and labels) and the JSON ``document`` (with the
    result's statistics, and the wall time since ``start`` (``time.perf_counter()``), added)
    under ``paths`` (all in one folder). Each file is written in the background as soon as it is
    computed, into a private folder, and the files are moved into place together once every one
    is written: a failure anywhere leaves none of them."""
    from .io import save_transform, write_image
    from .io.atomic import StagedOutputs

    t0 = time.perf_counter()
    linear, grid = result.linear, fixed.grid
    chain, inverse_chain = [linear], [linear.inverse()]
    with StagedOutputs(paths["json"].parent) as staged:
        staged.write(paths["affine"], lambda path: save_transform(linear, path))
        if result.field is not None:
            # float32 copies (the caller's result keeps its precision): the files' precision, and
            # twice as fast at 1 mm
            work = copy.deepcopy(result.field).float()
            forward = DisplacementField(grid, work.displacement(grid))
            staged.write(paths["warp"], lambda path: save_transform(forward, path))
            inverse_work = copy.deepcopy(result.inverse_field).float() if result.inverse_field is not None else work.inverse(inverse_iterations)
            inverse = DisplacementField(grid, inverse_work.displacement(grid))
            staged.write(paths["inverse_warp"], lambda path: save_transform(inverse, path))
            chain.append(forward)
            inverse_chain.insert(0, inverse)
        # the labels lie on the moving grid (read_inputs checks): one pass of mapped points for both
        moved = [(moving.data, "linear")] + ([(labels.data, "label")] if labels is not None else [])
        warped, *warped_labels = resample_many(moved, moving.grid, grid, Compose(chain))
        staged.write(paths["warped"], lambda path: write_image(warped, grid, path, np.float32))
        if labels is not None:
            staged.write(paths["labels"], lambda path: write_image(warped_labels[0], grid, path, labels.dtype))
        inverse_warped = resample(fixed.data, fixed.grid, moving.grid, Compose(inverse_chain))
        staged.write(paths["inverse_warped"], lambda path: write_image(inverse_warped, moving.grid, path, np.float32))
        result.stats.setdefault("timings_s", {})["outputs"] = time.perf_counter() - t0
        document.update({"outputs": {k: str(v) for k, v in paths.items()}, "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "machine": platform.platform(), **result.stats})
        waited = time.perf_counter()
        staged.wait()  # every image written: the JSON records the wall time up to here
        document["timings_s"]["writing_after_outputs"] = time.perf_counter() - waited
        if start is not None:
            document["timings_s"]["wall"] = time.perf_counter() - start
        staged.write(paths["json"], lambda path: Path(path).write_text(json.dumps(document, indent=2)))
        staged.commit()
