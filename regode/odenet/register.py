"""MS-ODENet registration of a moving image to a fixed image (``regode register``'s engine).

Both images are resampled into working grids (isotropic, the model's spacing, covering each
image's field of view, in its own world position), normalised, and aligned coarse to fine by the
stages of ``config.model``, each network followed by its kind's polish. The result is the fixed ->
moving mapping ``linear(field(x))``: ANTs' ``-t 1Warp -t 0GenericAffine.mat``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import NamedTuple

import torch

from ..alignment import check_overlap, header_start, keep_better_start, local_fit, starting_point
from ..checkpoint import weights_dir
from ..contrast import choose_similarity, fine_spacing
from ..device import resolve_device
from ..errors import RegodeError
from ..grid import Grid
from ..io import Image
from ..preprocess import working_image, working_mask, working_on
from ..result import Result
from ..sampling import sample
from ..transforms import Affine, Compose, DisplacementField
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
            raise RegodeError(
                f"--checkpoint {path} and {given[model.config.kind][1]} both hold a {model.config.kind} model"
            )
        given[model.config.kind] = (model, Path(path))
    extra = set(given) - set(config.stages)
    if extra:
        raise RegodeError(
            f"--checkpoint holds a {', '.join(sorted(extra))} model, which --model {config.model} does not use"
        )
    models = {}
    for kind in config.stages:
        if kind in given:
            models[kind] = given[kind]
            continue
        path = weights_dir() / f"{kind}.pt"
        if not path.is_file():
            raise RegodeError(
                f"no shipped {kind} model at {path}: train one with `regode train --model {kind}` or pass --checkpoint"
            )
        models[kind] = (load_model(path)[0], path)
    for kind, (model, _) in models.items():
        config.levels_run(
            kind, model.config.levels
        )  # refuses a --network-levels beyond a model's levels, before any image is read
    return models


class Outcome(NamedTuple):
    """One stage's result from one start."""

    linear: Affine
    """the linear part after the stage (fixed -> moving, world mm)."""
    core: object
    """the stage's deformable transform (None for a linear kind)."""
    nfe: list
    """the network's function evaluations per pyramid level run."""
    record: dict | None
    """the polish's record (None without the polish)."""
    seconds: dict
    """``{"": network seconds, "_polish": polish seconds}``."""


class _Working(NamedTuple):
    """The working images of a pair and where the registration starts from."""

    spacing: float
    """the working spacing (mm): the models'."""
    fixed: torch.Tensor
    """the fixed working image ``[1, 1, nz, ny, nx]`` on ``fixed_grid`` (world LPS mm)."""
    fixed_grid: Grid
    moving: torch.Tensor
    moving_grid: Grid
    linear: Affine
    """the start: fixed -> moving world LPS mm."""
    c_fix: torch.Tensor
    c_mov: torch.Tensor
    alignment: dict | None
    header: Affine | None
    start_choice: dict | None


def _start(fixed: Image, moving: Image, config: RegisterConfig, models: dict, device) -> _Working:
    """Both working images, checked for the pyramid the models need, and the start: the linear map
    from ``config``'s start (and, for an affine-first model whose head-centre start is far from
    the headers', the headers' start as well)."""
    spacing = next(iter(models.values()))[0].config.spacing
    fixed_w, fixed_grid = working_image(fixed, spacing, device)
    moving_w, moving_grid = working_image(moving, spacing, device)
    levels_needed = max(max(2, model.config.levels) for model, _ in models.values())  # the polish uses two levels
    for grid, image in ((fixed_grid, fixed), (moving_grid, moving)):
        check_pyramid(grid, levels_needed, f"{image.path or 'an image'}")
    linear_first = KINDS[config.stages[0]].linear
    linear, c_fix, c_mov, alignment = starting_point(
        fixed_w,
        fixed_grid,
        moving_w,
        moving_grid,
        config.initial_transform,
        config.center_of_mass,
        config.principal_axes and linear_first,
    )
    hint = (
        "give --initial-transform" if config.center_of_mass else "drop --no-center-of-mass, or give --initial-transform"
    )
    check_overlap(fixed_w, fixed_grid, moving_w, moving_grid, linear, hint)
    header, start_choice = None, None
    if config.stages[0] == "affine" and config.center_of_mass and not config.initial_transform:
        header, start_choice = header_start(fixed_w, fixed_grid, moving_w, moving_grid, linear, c_fix)
    return _Working(
        spacing, fixed_w, fixed_grid, moving_w, moving_grid, linear, c_fix, c_mov, alignment, header, start_choice
    )


def register_images(
    fixed: Image,
    moving: Image,
    config: RegisterConfig,
    models: dict | None = None,
    masks=(None, None),
    channels: tuple = (),
) -> Result:
    """Register ``moving`` to ``fixed`` with the MS-ODENet stages of ``config.model`` (``models``:
    from :func:`load_models`, if already loaded). ``masks``: the fixed and moving mask images (or
    None); the polishes count only points inside (the networks see the whole images).

    ``channels``: more ``(fixed, moving)`` image pairs of the same two subjects (FLAIR beside T1),
    each in its subject's world space, on any grid. The start and the networks use the first pair;
    every polish and the fine level compare each channel with its own similarity (``config.metric``:
    one for all, or one per channel) and average them, as ANTs sums its ``-m`` metrics."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    models = models if models is not None else load_models(config)
    timings, nfe, polish = {}, {}, {}
    start = time.perf_counter()
    if len(config.metric) not in (1, 1 + len(channels)):
        raise RegodeError(
            f"--metric {','.join(config.metric)}: give one similarity, or one per channel ({1 + len(channels)})"
        )
    w = _start(fixed, moving, config, models, device)
    spacing = w.spacing
    stacked, levels = _pyramids(w, channels, device)

    timings["preprocess"] = time.perf_counter() - start
    linear, field = w.linear, None
    for index, (name, (model, _)) in enumerate(models.items()):
        starts = [linear] if index or w.header is None else [linear, w.header]
        outcomes = [_stage(model.to(device), levels, s, w.c_fix, w.fixed_grid, config, masks, device) for s in starts]
        for outcome in outcomes:  # every start tried counts
            for key, seconds in outcome.seconds.items():
                timings[f"{name}{key}"] = timings.get(f"{name}{key}", 0.0) + seconds
        chosen = 0
        if (
            len(outcomes) > 1
        ):  # judged on the working images after the stage, as the affine polish judges its candidates
            t0 = time.perf_counter()
            keep = None if masks[0] is None else working_mask(masks[0], w.fixed_grid, device)
            fits = [local_fit(w.fixed, w.fixed_grid, w.moving, w.moving_grid, o.linear, keep) for o in outcomes]
            chosen = keep_better_start(w.start_choice, fits)
            timings[f"{name}_judge"] = time.perf_counter() - t0
        linear, core, nfe[name], record, _ = outcomes[chosen]
        if record is not None:
            polish[name] = record
        if core is not None:
            field = DisplacementField(w.fixed_grid, core.displacement(w.fixed_grid).detach())
    fine = fine_spacing(config.fine_request, fixed.grid, spacing, at_working=True) if field is not None else None
    if fine is not None:
        t0 = time.perf_counter()
        working = ((stacked[0], w.fixed_grid), (stacked[1], w.moving_grid))
        pairs = ((fixed, moving), *channels)
        field, polish["fine"] = _fine_level(pairs, *working, linear, field, fine, config, masks, device)
        timings["fine"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    stats = {
        "timings_s": timings,
        "nfe": nfe,
        "network_levels_run": {name: len(counts) for name, counts in nfe.items()},
        "device": str(device),
        "working_spacing_mm": spacing,
        "fine_spacing_mm": fine,
        "head_center_fixed": w.c_fix.tolist(),
        "head_center_moving": w.c_mov.tolist(),
        "principal_axes": w.alignment,
        "start_choice": w.start_choice,
        "polish": polish,
    }
    return Result(linear, field, stats)


def _pyramids(w: _Working, channels, device):
    """Every channel on the first channel's working grids (``[1, C, ...]``, fixed and moving), and
    ``levels(n, every_channel=False)``: the pyramids of ``n`` levels of the first channel (the
    networks') or of every channel (the polishes'), each made once."""
    stacked = (w.fixed, w.moving)
    if channels:
        stacked = (
            torch.cat([w.fixed, *(working_on(f, w.fixed_grid, device) for f, _ in channels)], 1),
            torch.cat([w.moving, *(working_on(m, w.moving_grid, device) for _, m in channels)], 1),
        )
    made = {}

    def levels(n, every_channel=False):
        key = (n, every_channel and bool(channels))  # one channel: the networks' pyramids are the polishes'
        if key not in made:
            f, m = stacked if key[1] else (w.fixed, w.moving)
            made[key] = (pyramid(f, w.fixed_grid, n), pyramid(m, w.moving_grid, n))
        return made[key]

    return stacked, levels


def _stage(model: MSODENet, levels, linear, c_fix, fixed_grid, config: RegisterConfig, masks, device) -> Outcome:
    """One stage from ``linear``: its network (on the pyramid levels ``config.levels_run`` names),
    then (``config.polish``) its kind's polish schedule on the 4 and 2 mm levels."""
    t0 = time.perf_counter()
    run = config.levels_run(model.config.kind, model.config.levels)
    with torch.no_grad():
        theta, nfe = model(
            *levels(model.config.levels),
            None,
            c_fix.float().to(device)[None],
            copy.deepcopy(linear).float().to(device),
            levels=run,
        )
    linear, core = model.kind.result(model, theta.cpu().double(), linear, c_fix, fixed_grid)
    seconds = {"": time.perf_counter() - t0}
    record = None
    if config.polish:
        t0 = time.perf_counter()
        images = levels(max(2, model.config.levels), True)  # the polish works on the 4 and 2 mm levels
        schedule = getattr(config.polish_schedule, model.config.kind)
        linear, core, record = model.kind.polish(
            *images, linear, core, c_fix, config.seed, schedule, _level_masks(masks, images)
        )
        seconds["_polish"] = time.perf_counter() - t0
    return Outcome(linear, core, nfe, record, seconds)


def _fine_level(
    pairs,
    working_fixed,
    working_moving,
    linear,
    field: DisplacementField,
    spacing: float,
    config: RegisterConfig,
    masks,
    device,
) -> tuple[DisplacementField, dict]:
    """The fine level: ``field`` refined by a B-spline correction on a pyramid of the images
    (``pairs``: the fixed and moving image of each channel) at ``spacing`` mm (the fine schedule,
    ``config.polish_schedule.fine``), with each channel's similarity ``config.metric`` (auto: chosen
    on the channel's working images as the pair stands, regode.contrast); the result is a
    displacement field on ``field``'s grid."""
    (fixed_w, fixed_grid), (moving_w, moving_grid) = working_fixed, working_moving
    asked = config.metric * len(pairs) if len(config.metric) == 1 else config.metric
    metrics, figures = list(asked), [None] * len(pairs)
    if "auto" in asked:
        with torch.no_grad():
            moved = sample(
                moving_w, moving_grid, copy.deepcopy(Compose([linear, field])).to(device).float().map_grid(fixed_grid)
            )
        keep = None if masks[0] is None else working_mask(masks[0], fixed_grid, device) > 0.5
        for c, name in enumerate(asked):
            if name == "auto":
                metrics[c], figures[c] = choose_similarity(
                    fixed_w[0, c], moved[0, c], None if keep is None else keep[0, 0]
                )
    metric = "+".join(metrics)
    schedule = config.polish_schedule.fine.for_metric(metric, spacing)
    depth = 1 + max((level.coarseness for level in schedule.levels), default=0)  # the fine schedule's pyramid
    if spacing == float(fixed_grid.spacing[0]):  # at the (isotropic) working spacing: the working images
        fixed_f, fine_grid, moving_f, moving_grid_f = fixed_w, fixed_grid, moving_w, moving_grid
    else:
        (fixed, moving), rest = pairs[0], pairs[1:]
        fixed_f, fine_grid = working_image(fixed, spacing, device)
        moving_f, moving_grid_f = working_image(moving, spacing, device)
        fixed_f = torch.cat([fixed_f, *(working_on(f, fine_grid, device) for f, _ in rest)], 1)
        moving_f = torch.cat([moving_f, *(working_on(m, moving_grid_f, device) for _, m in rest)], 1)
    images = (pyramid(fixed_f, fine_grid, depth), pyramid(moving_f, moving_grid_f, depth))
    # the field stays on its working grid: the correction's control spacing (6 mm) is coarse enough
    # for it, and the fit samples a field 8 times smaller at every step; the images are what is finer
    start = DisplacementField(field.grid, field.field.to(device=device, dtype=fixed_f.dtype))
    refined, record = polish_dense(*images, linear, start, schedule, config.seed, _level_masks(masks, images), metric)
    record.update(metric=metric, metric_figures=figures[0] if len(pairs) == 1 else figures, spacing_mm=spacing)
    return DisplacementField(field.grid, refined.field.detach().cpu()), record


def _level_masks(masks, pyramids) -> tuple[list | None, list | None]:
    """The fixed and moving masks on every level of the fixed and moving pyramids (or None)."""
    return tuple(
        None if mask is None else [working_mask(mask, level.grid, level.volume.device) for level in levels]
        for mask, levels in zip(masks, pyramids, strict=False)
    )
