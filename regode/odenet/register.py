"""``regode register``: MS-ODENet registration of a moving image to a fixed image.

Both images are resampled into working grids (isotropic, the model's spacing, covering each
image's field of view, in its own world position), normalised, and aligned coarse to fine. The
result is the fixed -> moving mapping ``linear(field(x))``: ANTs' ``-t 1Warp -t 0GenericAffine.mat``.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import RegodeError
from ..grid import Grid
from ..io import Image
from ..transforms import Affine, Compose, DisplacementField, Transform
from ..warp import resample
from .checkpoint import file_hash, load_model, weights_dir
from .model import MSODENet, pyramid
from .preprocess import center_of_mass, to_grid

MODELS = ("rigid", "bspline", "dense", "rigid+bspline", "rigid+dense")


@dataclass
class RegisterConfig:
    """Everything that defines a registration (saved in ``PREFIXregode.json``)."""

    model: str = "rigid+bspline"
    checkpoints: dict = field(default_factory=dict)
    """stage kind -> model file (default: the shipped ``weights/<kind>.pt``)."""
    center_of_mass: bool = True
    """start from the translation between the images' centres of mass."""
    initial_transform: list = field(default_factory=list)
    """transform specs (antsApplyTransforms order) of the starting fixed -> moving mapping."""
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    inverse_iterations: int = 30

    def stages(self) -> list[str]:
        if self.model not in MODELS:
            raise RegodeError(f"unknown model {self.model!r}: choose from {', '.join(MODELS)}")
        return self.model.split("+")


@dataclass
class Result:
    linear: Affine
    """the linear part (initial transform and rigid stage), fixed -> moving."""
    field: DisplacementField | None
    """the deformable part on the fixed working grid (applied first to fixed points), or None."""
    stats: dict

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


def load_models(config: RegisterConfig) -> dict[str, tuple[MSODENet, Path]]:
    models = {}
    for kind in config.stages():
        path = Path(config.checkpoints.get(kind) or weights_dir() / f"{kind}.pt")
        if kind not in config.checkpoints and not path.is_file():
            raise RegodeError(f"no shipped {kind} model at {path}: train one with `regode train --model {kind}` or pass --checkpoint")
        models[kind] = (load_model(path, kind)[0], path)
    extra = set(config.checkpoints) - set(models)
    if extra:
        raise RegodeError(f"--checkpoint holds a {', '.join(sorted(extra))} model, which --model {config.model} does not use")
    return models


def working_image(image: Image, spacing: float, device: torch.device) -> tuple[torch.Tensor, Grid]:
    """The image on an isotropic grid of ``spacing`` mm over its own field of view, anti-aliased
    and normalised to [0, 1]."""
    if float(image.data.max()) <= float(image.data.min()):
        raise RegodeError(f"{image.path or 'image'} is constant: nothing to register")
    grid = image.grid.with_spacing(spacing)
    return to_grid(image, grid).to(device), grid


def register_images(fixed: Image, moving: Image, config: RegisterConfig, models: dict | None = None) -> Result:
    """Register ``moving`` to ``fixed`` with the MS-ODENet stages of ``config.model``."""
    from ..io import load_transform_chain

    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    models = models if models is not None else load_models(config)
    timings, nfe = {}, {}
    start = time.perf_counter()
    spacing = next(iter(models.values()))[0].config.spacing
    fixed_w, fixed_grid = working_image(fixed, spacing, device)
    moving_w, moving_grid = working_image(moving, spacing, device)
    c_fix = center_of_mass(fixed_w, fixed_grid).double()
    c_mov = center_of_mass(moving_w, moving_grid).double()
    pyramids = {}

    def levels(n):
        if n not in pyramids:
            pyramids[n] = (pyramid(fixed_w, fixed_grid, n), pyramid(moving_w, moving_grid, n))
        return pyramids[n]

    if config.initial_transform:
        linear = load_transform_chain(config.initial_transform)
        if not linear.is_linear:
            raise RegodeError("--initial-transform must be linear (rigid or affine)")
        linear = linear.as_affine().double()
    elif config.center_of_mass:
        linear = Affine(torch.eye(3, dtype=torch.float64), (c_mov - c_fix)[None])
    else:
        linear = Affine(torch.eye(3, dtype=torch.float64))
    timings["preprocess"] = time.perf_counter() - start
    field_transform = None
    for kind, (model, _) in models.items():
        t0 = time.perf_counter()
        model = model.to(device)
        fix_pyr, mov_pyr = levels(model.config.levels)
        center = c_fix.float().to(device)[None]
        pre = copy.deepcopy(linear).float().to(device)
        with torch.no_grad():
            theta, counts = model(fix_pyr, mov_pyr, None, center, pre)
        nfe[kind] = counts
        theta = theta.cpu().double()
        if kind == "rigid":
            linear = Compose([linear, model.transform(theta, None, c_fix[None])]).as_affine()
        else:
            state_grid = model.state_grid(fixed_grid)
            core = model.transform(theta, state_grid)
            field_transform = DisplacementField(fixed_grid, core.displacement(fixed_grid).detach())
        timings[kind] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    stats = {"timings_s": timings, "nfe": nfe, "device": str(device), "working_spacing_mm": spacing,
             "center_of_mass_fixed": c_fix.tolist(), "center_of_mass_moving": c_mov.tolist()}
    return Result(linear, field_transform, stats)


def output_paths(prefix: str | Path, deformable: bool, labels: bool) -> dict[str, Path]:
    names = {"affine": "0GenericAffine.mat", "warped": "Warped.nii.gz", "inverse_warped": "InverseWarped.nii.gz",
             "json": "regode.json"}
    if deformable:
        names.update(warp="1Warp.nii.gz", inverse_warp="1InverseWarp.nii.gz")
    if labels:
        names["labels"] = "WarpedLabels.nii.gz"
    return {k: Path(str(prefix) + v) for k, v in names.items()}


def register_files(fixed_path, moving_path, prefix, config: RegisterConfig, moving_labels=None) -> dict:
    """Read, register, and write ANTs-named outputs at the fixed image's full resolution."""
    from .. import __version__
    from ..io import read_image, save_transform, write_image
    from ..io.atomic import check_writable

    start = time.perf_counter()
    stages = config.stages()
    paths = output_paths(prefix, stages[-1] != "rigid", moving_labels is not None)
    for p in paths.values():
        check_writable(p)
    models = load_models(config)
    fixed = read_image(fixed_path, what="fixed image")
    moving = read_image(moving_path, what="moving image")
    labels = None
    if moving_labels is not None:
        labels = read_image(moving_labels, what="moving label image")
        if not labels.grid.same_as(moving.grid):
            raise RegodeError(f"moving label image {moving_labels} is not on the moving image's grid (size, spacing, origin, direction)")
    read_s = time.perf_counter() - start

    result = register_images(fixed, moving, config, models)
    t0 = time.perf_counter()
    linear, grid = result.linear, fixed.grid
    outputs = {"affine": linear}
    chain = [linear]
    inverse_chain = [linear.inverse()]
    if result.field is not None:
        work = result.field
        forward = DisplacementField(grid, work.displacement(grid).float())
        inverse_work = work.inverse(config.inverse_iterations)
        inverse = DisplacementField(grid, inverse_work.displacement(grid).float())
        outputs.update(warp=forward, inverse_warp=inverse)
        chain.append(forward)
        inverse_chain.insert(0, inverse)
    warped = resample(moving.data, moving.grid, grid, Compose(chain))
    inverse_warped = resample(fixed.data, fixed.grid, moving.grid, Compose(inverse_chain))
    warped_labels = resample(labels.data, labels.grid, grid, Compose(chain), "label") if labels is not None else None
    result.stats["timings_s"]["outputs"] = time.perf_counter() - t0

    for key in ("affine", "warp", "inverse_warp"):
        if key in outputs:
            save_transform(outputs[key], paths[key])
    write_image(warped, grid, paths["warped"], np.float32)
    write_image(inverse_warped, moving.grid, paths["inverse_warped"], np.float32)
    if warped_labels is not None:
        write_image(warped_labels, grid, paths["labels"], labels.dtype)
    result.stats["timings_s"]["read"] = read_s
    result.stats["timings_s"]["wall"] = time.perf_counter() - start
    document = {
        "regode": __version__,
        "command": "register",
        "fixed": str(fixed_path),
        "moving": str(moving_path),
        "moving_labels": str(moving_labels) if moving_labels else None,
        "config": asdict(config),
        "models": {kind: {"path": str(p), "sha256": file_hash(p), "config": m.config.to_dict()} for kind, (m, p) in models.items()},
        "outputs": {k: str(v) for k, v in paths.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        **result.stats,
    }
    from ..io.atomic import atomic_output

    with atomic_output(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2))
    return document
