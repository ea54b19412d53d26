"""``regode register``: MS-ODENet registration of a moving image to a fixed image.

Both images are resampled into working grids (isotropic, the model's spacing, covering each
image's field of view, in its own world position), normalised, and aligned coarse to fine. The
result is the fixed -> moving mapping ``linear(field(x))``: ANTs' ``-t 1Warp -t 0GenericAffine.mat``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..alignment import head_center, head_moments, principal_axes
from ..errors import RegodeError
from ..io import Image
from ..pipeline import Result, initial_linear, output_paths, read_inputs, resolve_device, working_image, write_outputs
from ..refine import polish_bspline, polish_dense, polish_rigid
from ..transforms import Compose, DisplacementField
from .checkpoint import file_hash, load_model, weights_dir
from .model import MSODENet, pyramid

MODELS = ("rigid", "bspline", "dense", "rigid+bspline", "rigid+dense")


@dataclass
class RegisterConfig:
    """Everything that defines a registration (saved in ``PREFIXregode.json``)."""

    model: str = "rigid"
    checkpoints: dict = field(default_factory=dict)
    """stage kind -> model file (default: the shipped ``weights/<kind>.pt``)."""
    center_of_mass: bool = True
    """start from the translation between the centres of the images' head masks
    (regode.alignment.head_center)."""
    principal_axes: bool = True
    """models that start with a rigid stage: start from the best principal-axes alignment (or the
    head centres' translation, whichever shares more mutual information); see regode.alignment."""
    polish: bool = True
    """after each network, a short mutual-information optimisation of its result (regode.refine):
    the network brings the pair near the truth, the optimiser lands on it."""
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


def starting_point(fixed_w, fixed_grid, moving_w, moving_grid, config: RegisterConfig, rigid: bool):
    """The fixed -> moving linear map the stages start from (``--initial-transform``, the head
    centres' translation, or for a model with a ``rigid`` stage the best principal-axes
    alignment), the two head centres (world mm) and the record of the principal-axes choice (or
    None), for two working images."""
    heads = head_moments(fixed_w, fixed_grid), head_moments(moving_w, moving_grid)
    c_fix, c_mov = head_center(fixed_w, fixed_grid, heads[0]), head_center(moving_w, moving_grid, heads[1])
    linear = initial_linear(config.initial_transform, config.center_of_mass, c_fix, c_mov)
    alignment = None
    if rigid and config.principal_axes and config.center_of_mass and not config.initial_transform:
        linear, alignment = principal_axes(fixed_w, fixed_grid, moving_w, moving_grid, linear, heads=heads)
    return linear, c_fix, c_mov, alignment


def register_images(fixed: Image, moving: Image, config: RegisterConfig, models: dict | None = None) -> Result:
    """Register ``moving`` to ``fixed`` with the MS-ODENet stages of ``config.model``."""
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
    linear, c_fix, c_mov, alignment = starting_point(fixed_w, fixed_grid, moving_w, moving_grid, config, "rigid" in models)
    pyramids = {}

    def levels(n):
        if n not in pyramids:
            pyramids[n] = (pyramid(fixed_w, fixed_grid, n), pyramid(moving_w, moving_grid, n))
        return pyramids[n]

    timings["preprocess"] = time.perf_counter() - start
    field_transform, polish = None, {}
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
            core = model.transform(theta, model.state_grid(fixed_grid))
        timings[kind] = time.perf_counter() - t0
        if config.polish:
            t0 = time.perf_counter()
            images = levels(max(2, model.config.levels))  # the polish works on the 4 and 2 mm levels
            if kind == "rigid":
                linear, polish[kind] = polish_rigid(*images, linear, c_fix, seed=config.seed)
            elif kind == "bspline":
                core, polish[kind] = polish_bspline(*images, linear, core, seed=config.seed)
            else:
                core, polish[kind] = polish_dense(*images, linear, core, seed=config.seed)
            timings[f"{kind}_polish"] = time.perf_counter() - t0
        if kind != "rigid":
            field_transform = DisplacementField(fixed_grid, core.displacement(fixed_grid).detach())
    timings["total"] = time.perf_counter() - start
    stats = {"timings_s": timings, "nfe": nfe, "device": str(device), "working_spacing_mm": spacing,
             "head_center_fixed": c_fix.tolist(), "head_center_moving": c_mov.tolist(),
             "principal_axes": alignment, "polish": polish}
    return Result(linear, field_transform, stats)


def register_files(fixed_path, moving_path, prefix, config: RegisterConfig, moving_labels=None) -> dict:
    """Read, register, and write ANTs-named outputs at the fixed image's full resolution."""
    from .. import __version__

    start = time.perf_counter()
    paths = output_paths(prefix, config.stages()[-1] != "rigid", moving_labels is not None)
    models = load_models(config)
    fixed, moving, labels = read_inputs(fixed_path, moving_path, moving_labels, paths)
    read_s = time.perf_counter() - start
    result = register_images(fixed, moving, config, models)
    result.stats["timings_s"]["read"] = read_s
    document = {
        "regode": __version__,
        "command": "register",
        "fixed": str(fixed_path),
        "moving": str(moving_path),
        "moving_labels": str(moving_labels) if moving_labels else None,
        "config": asdict(config),
        "models": {kind: {"path": str(p), "sha256": file_hash(p), "config": m.config.to_dict()} for kind, (m, p) in models.items()},
    }
    write_outputs(result, fixed, moving, labels, paths, document, config.inverse_iterations, start)
    return document
