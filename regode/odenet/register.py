"""MS-ODENet registration of a moving image to a fixed image (``regode register``'s engine).

Both images are resampled into working grids (isotropic, the model's spacing, covering each
image's field of view, in its own world position), normalised, and aligned coarse to fine by the
stages of ``config.model``, each network followed by its kind's polish. The result is the fixed ->
moving mapping ``linear(field(x))``: ANTs' ``-t 1Warp -t 0GenericAffine.mat``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..alignment import check_overlap, header_start, keep_better_start, local_fit, starting_point
from ..checkpoint import weights_dir
from ..contrast import choose_similarity, fine_spacing
from ..device import resolve_device
from ..errors import RegodeError
from ..io import Image
from ..preprocess import working_image, working_mask
from ..result import Result
from ..sampling import sample
from ..transforms import Compose, DisplacementField
from .config import RegisterConfig
from .kinds import KINDS
from .model import MSODENet, check_pyramid, load_model, pyramid
from .polish import polish_dense


def load_models(config: RegisterConfig) -> dict[str, tuple[MSODENet, Path]]:
    """The model of each stage of ``config.model``: the ``--checkpoint`` file of its kind, else the
    shipped ``weights/<kind>.pt``. Each file is read once."""
    given = {}
    for path in config.checkpoints:
        model, _ = load_model(path)
        if model.config.kind in given:
            raise RegodeError(f"--checkpoint {path} and {given[model.config.kind][1]} both hold a {model.config.kind} model")
        given[model.config.kind] = (model, Path(path))
    extra = set(given) - set(config.stages)
    if extra:
        raise RegodeError(f"--checkpoint holds a {', '.join(sorted(extra))} model, which --model {config.model} does not use")
    models = {}
    for kind in config.stages:
        if kind in given:
            models[kind] = given[kind]
            continue
        path = weights_dir() / f"{kind}.pt"
        if not path.is_file():
            raise RegodeError(f"no shipped {kind} model at {path}: train one with `regode train --model {kind}` or pass --checkpoint")
        models[kind] = (load_model(path)[0], path)
    for kind, (model, _) in models.items():
        config.levels_run(kind, model.config.levels)  # refuses a --network-levels beyond a model's levels, before any image is read
    return models


def register_images(fixed: Image, moving: Image, config: RegisterConfig, models: dict | None = None, masks=(None, None)) -> Result:
    """Register ``moving`` to ``fixed`` with the MS-ODENet stages of ``config.model`` (``models``:
    from :func:`load_models`, if already loaded). ``masks``: the fixed and moving mask images (or
    None); the polishes count only points inside (the networks see the whole images)."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    models = models if models is not None else load_models(config)
    timings, nfe, polish = {}, {}, {}
    start = time.perf_counter()
    spacing = next(iter(models.values()))[0].config.spacing
    fixed_w, fixed_grid = working_image(fixed, spacing, device)
    moving_w, moving_grid = working_image(moving, spacing, device)
    levels_needed = max(max(2, model.config.levels) for model, _ in models.values())  # the polish uses two levels
    for grid, image in ((fixed_grid, fixed), (moving_grid, moving)):
        check_pyramid(grid, levels_needed, f"{image.path or 'an image'}")
    rigid_first = KINDS[config.stages[0]].linear
    linear, c_fix, c_mov, alignment = starting_point(fixed_w, fixed_grid, moving_w, moving_grid, config.initial_transform,
                                                     config.center_of_mass, config.principal_axes and rigid_first)
    check_overlap(fixed_w, fixed_grid, moving_w, moving_grid, linear,
                  "drop --no-center-of-mass, or give --initial-transform" if not config.center_of_mass else "give --initial-transform")
    pyramids = {}

    def levels(n):
        if n not in pyramids:
            pyramids[n] = (pyramid(fixed_w, fixed_grid, n), pyramid(moving_w, moving_grid, n))
        return pyramids[n]

    # an affine-first model whose head-centre start is far from the headers' also starts from the headers
    header, start_choice = None, None
    if config.stages[0] == "affine" and config.center_of_mass and not config.initial_transform:
        header, start_choice = header_start(fixed_w, fixed_grid, moving_w, moving_grid, linear, c_fix)
    timings["preprocess"] = time.perf_counter() - start
    field = None
    for index, (name, (model, _)) in enumerate(models.items()):
        starts = [linear] if index or header is None else [linear, header]
        outcomes = [_stage(model.to(device), levels, start_i, c_fix, fixed_grid, config, masks, device) for start_i in starts]
        for outcome in outcomes:  # every start tried counts
            for key, seconds in outcome[4].items():
                timings[f"{name}{key}"] = timings.get(f"{name}{key}", 0.0) + seconds
        chosen = 0
        if len(outcomes) > 1:  # judged on the working images after the stage, as the affine polish judges its candidates
            t0 = time.perf_counter()
            keep = None if masks[0] is None else working_mask(masks[0], fixed_grid, device)
            chosen = keep_better_start(start_choice, [local_fit(fixed_w, fixed_grid, moving_w, moving_grid, outcome[0], keep)
                                                      for outcome in outcomes])
            timings[f"{name}_judge"] = time.perf_counter() - t0
        linear, core, nfe[name], record, _ = outcomes[chosen]
        if record is not None:
            polish[name] = record
        if core is not None:
            field = DisplacementField(fixed_grid, core.displacement(fixed_grid).detach())
    fine = fine_spacing(config.fine_request, fixed.grid, spacing, at_working=True) if field is not None else None
    if fine is not None:
        t0 = time.perf_counter()
        field, polish["fine"] = _fine_level(fixed, moving, (fixed_w, fixed_grid), (moving_w, moving_grid), linear, field, fine,
                                            config, masks, device)
        timings["fine"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    stats = {"timings_s": timings, "nfe": nfe, "network_levels_run": {name: len(counts) for name, counts in nfe.items()},
             "device": str(device), "working_spacing_mm": spacing, "fine_spacing_mm": fine,
             "head_center_fixed": c_fix.tolist(), "head_center_moving": c_mov.tolist(),
             "principal_axes": alignment, "start_choice": start_choice, "polish": polish}
    return Result(linear, field, stats)


def _stage(model: MSODENet, levels, linear, c_fix, fixed_grid, config: RegisterConfig, masks, device) -> tuple:
    """One stage from ``linear``: its network (on the pyramid levels ``config.levels_run`` names),
    then (``config.polish``) its kind's polish on the 4 and 2 mm levels. Returns (linear, core,
    network evaluations per level run, polish record or None, {"": network seconds, "_polish":
    polish seconds})."""
    t0 = time.perf_counter()
    run = config.levels_run(model.config.kind, model.config.levels)
    with torch.no_grad():
        theta, nfe = model(*levels(model.config.levels), None, c_fix.float().to(device)[None],
                           copy.deepcopy(linear).float().to(device), levels=run)
    linear, core = model.kind.result(model, theta.cpu().double(), linear, c_fix, fixed_grid)
    seconds = {"": time.perf_counter() - t0}
    record = None
    if config.polish:
        t0 = time.perf_counter()
        images = levels(max(2, model.config.levels))  # the polish works on the 4 and 2 mm levels
        linear, core, record = model.kind.polish(*images, linear, core, c_fix, config.seed, config.polish_schedule,
                                                 _level_masks(masks, images))
        seconds["_polish"] = time.perf_counter() - t0
    return linear, core, nfe, record, seconds


def _fine_level(fixed: Image, moving: Image, working_fixed, working_moving, linear, field: DisplacementField, spacing: float,
                config: RegisterConfig, masks, device) -> tuple[DisplacementField, dict]:
    """The fine level: ``field`` refined by a B-spline correction on a pyramid of the images at
    ``spacing`` mm (the levels of ``PolishConfig.fine``), with the similarity ``config.metric``
    (auto: chosen on the working images as the pair stands, regode.contrast); the result is a
    displacement field on ``field``'s grid."""
    (fixed_w, fixed_grid), (moving_w, moving_grid) = working_fixed, working_moving
    metric, figures = config.metric, None
    if metric == "auto":
        with torch.no_grad():
            moved = sample(moving_w, moving_grid, copy.deepcopy(Compose([linear, field])).to(device).float().map_grid(fixed_grid))
        keep = None if masks[0] is None else working_mask(masks[0], fixed_grid, device) > 0.5
        metric, figures = choose_similarity(fixed_w[0, 0], moved[0, 0], None if keep is None else keep[0, 0])
    given = config.polish_schedule
    depth = 1 + max((level.coarseness for level in given.fine), default=0)  # the fine schedule's pyramid
    if spacing == float(fixed_grid.spacing[0]):  # at the (isotropic) working spacing: the working images
        fixed_f, fine_grid, moving_f, moving_grid_f = fixed_w, fixed_grid, moving_w, moving_grid
    else:
        fixed_f, fine_grid = working_image(fixed, spacing, device)
        moving_f, moving_grid_f = working_image(moving, spacing, device)
    images = (pyramid(fixed_f, fine_grid, depth), pyramid(moving_f, moving_grid_f, depth))
    # the field stays on its working grid: the correction's control spacing (6 mm) is coarse enough
    # for it, and the fit samples a field 8 times smaller at every step; the images are what is finer
    start = DisplacementField(field.grid, field.field.to(device=device, dtype=fixed_f.dtype))
    schedule = replace(given, lambda_grad=getattr(given, f"fine_lambda_grad_{metric}"), lambda_fold=given.fine_lambda_fold,
                       fine=given.fine_levels(spacing))
    refined, record = polish_dense(*images, linear, start, schedule, config.seed, _level_masks(masks, images), metric, fine=True)
    record.update(metric=metric, metric_figures=figures, spacing_mm=spacing)
    return DisplacementField(field.grid, refined.field.detach().cpu()), record


def _level_masks(masks, pyramids) -> tuple[list | None, list | None]:
    """The fixed and moving masks on every level of the fixed and moving pyramids (or None)."""
    return tuple(None if mask is None else [working_mask(mask, level.grid, level.volume.device) for level in levels]
                 for mask, levels in zip(masks, pyramids))
