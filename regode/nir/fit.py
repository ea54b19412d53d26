"""``regode fit-field``'s engine: per-pair neural-field registration (NIR).

A neural field ``u`` is fitted (regode.fitting, the per-pair optimiser ``register``'s polish uses
too) so that the moving image sampled at ``linear(x + u(x))`` matches the fixed image at the fixed
points ``x`` drawn by a sampler, with a folding penalty and a smoothness term on the mapping's
finite-difference Jacobian. With ``diffeomorphic`` the field is a stationary velocity, integrated
over [0, 1]. ``affine`` fits an affine map first (12 parameters, on the coarse lattice).

The hybrid sampler runs two phases: a field on the downsize sampler, then, that field frozen, a
second field on mini-patches; the final mapping is ``phi_1(phi_2(x))`` (points meet the second,
finer field first). The result is evaluated on the fixed working grid.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .. import fitting
from ..alignment import check_overlap, header_start, initial_linear, keep_better_start, local_fit
from ..contrast import choose_similarity, fine_spacing
from ..device import resolve_device
from ..encoder.features import content_volume, load_encoder
from ..grid import Grid
from ..io import Image
from ..lattice import downsize, patches, region_of
from ..losses import mind
from ..preprocess import blur, foreground, head_center, working_image, working_mask
from ..progress import bar
from ..result import Result
from ..sampling import sample
from ..transforms import Affine, Compose, DisplacementField
from .config import FEATURE_METRICS, FitConfig
from .fields import FieldTransform, NeuralField

CONTENT_COMPONENTS = 8
"""the content features enter fit-field as their first 8 principal components over the fixed head
(most of the 32 channels' variance, at a quarter of the sampling cost; docs/concepts/fit-field.md)."""
AFFINE_SCALES = (0.1, 10.0)
"""the affine stage's steps, as factors of ``lr``: matrix entries and millimetres move comparable
distances under one learning rate."""


def feature_volumes(config: FitConfig, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed and moving feature volumes of a feature metric, both divided by the square root of
    the fixed features' total variance over the head, so that the loss is about 2 between unrelated
    features and 0 at a perfect match, whatever the metric."""
    head = foreground(fixed[0, 0])
    if config.metric == "content":
        model, _ = load_encoder(config.encoder, config.spacing)
        model = model.to(fixed.device)
        slices = model.config.slices
        fixed_f, moving_f = content_volume(model.content, fixed, slices), content_volume(model.content, moving, slices)
        fixed_f, moving_f = principal_components(fixed_f, moving_f, head, CONTENT_COMPONENTS)
    else:
        fixed_f, moving_f = mind(fixed), mind(moving)
    values = fixed_f[0].flatten(1)[:, head.flatten()] if bool(head.any()) else fixed_f[0].flatten(1)
    scale = values.var(dim=1).sum().clamp(min=1e-8).sqrt()
    return fixed_f / scale, moving_f / scale


def principal_components(
    fixed: torch.Tensor, moving: torch.Tensor, head: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature volumes ``[1, C, ...]`` projected on the ``count`` leading principal axes of the
    fixed features inside ``head`` (about the fixed features' mean there)."""
    flat = fixed[0].flatten(1)
    values = flat[:, head.flatten()] if bool(head.any()) else flat
    mean = values.mean(1, keepdim=True)
    centred = values - mean
    _, vectors = torch.linalg.eigh(centred @ centred.T / centred.shape[1])
    axes = vectors[:, -count:].flip(1).T  # [count, C], largest variance first

    def project(volume):
        return (axes @ (volume[0].flatten(1) - mean)).reshape(1, count, *volume.shape[2:])

    return project(fixed), project(moving)


def _plan(
    config: FitConfig, images: dict, fixed_grid: Grid, moving_at: Grid, region: Grid, device, masks=(None, None)
) -> list[list[fitting.Stage]]:
    """The fields to fit, each a list of stages. ``images``: the fixed and moving working images
    (``fine``) and, smoothed for the coarse lattice (anti-aliasing, as ANTs' shrink levels), ``coarse``."""

    def lattice(kind, stride):
        if kind == "downsize":
            return lambda gen: downsize(region, stride, gen).to(device)
        return lambda gen: patches(region, config.patch_size, config.patches, gen).to(device)

    def stage(name, kind, stride, which, iterations):
        fix, mov = images[which]
        return fitting.Stage(
            name=name, fixed=fix, fixed_grid=fixed_grid, moving=mov, moving_grid=moving_at,
            lattice=lattice(kind, stride), iterations=iterations, fixed_mask=masks[0], moving_mask=masks[1],
        )  # fmt: skip

    first = [stage(f"downsize:{config.stride}", "downsize", config.stride, "fine", config.iterations)]
    if config.coarse_iterations:
        first.insert(
            0, stage(f"downsize:{2 * config.stride}", "downsize", 2 * config.stride, "coarse", config.coarse_iterations)
        )
    patch = [
        stage("patch", "patch", 1, "fine", config.iterations if config.sampler == "patch" else config.refine_iterations)
    ]
    return {"downsize": [first], "patch": [patch], "hybrid": [first, patch]}[config.sampler]


def _fit_affine(
    config: FitConfig, coarse, fixed_grid: Grid, moving_at: Grid, region: Grid, masks, similarity: str, generator
):
    """The affine stage: 12 parameters about the sample region's centre, on the coarse lattice and
    smoothed images (mutual information for ``--metric auto``, as ANTs' scripts use MI for their
    linear stages); the fitted map (frozen) and its record."""
    fix, mov = coarse
    device = fix.device
    affine = Affine(
        nn.Parameter(torch.eye(3, device=device)[None]),
        nn.Parameter(torch.zeros(1, 3, device=device)),
        torch.as_tensor(region.center, dtype=torch.float32, device=device)[None],
    )
    stage = fitting.Stage(
        name=f"affine:{2 * config.stride}", fixed=fix, fixed_grid=fixed_grid, moving=mov, moving_grid=moving_at,
        lattice=lambda gen: downsize(region, 2 * config.stride, gen).to(device), iterations=config.affine_iterations,
        fixed_mask=masks[0], moving_mask=masks[1],
    )  # fmt: skip
    objective = fitting.Objective("mi" if similarity == "auto" else similarity, config.ncc_window)
    record = fitting.run(fitting.Fit(affine, objective, config.lr, scales=list(AFFINE_SCALES)), [stage], generator)
    return affine.requires_grad_(False), record


def _on_cpu(affine: Affine) -> Affine:
    """A fitted affine stage as a fixed float64 map on the CPU (where the start and the result live)."""
    return Affine(
        affine.matrix.detach().double().cpu(), affine.translation.detach().double().cpu(), affine.center.double().cpu()
    )


def _affine_stage(
    config: FitConfig,
    coarse,
    plain,
    fixed_grid: Grid,
    moving_grid: Grid,
    region: Grid,
    masks,
    similarity: str,
    generator: torch.Generator,
    linear: Affine,
    c_fix: torch.Tensor,
) -> tuple:
    """The affine stage from ``linear``, and (``center_of_mass``, where the head centres' start is
    more than ``regode.alignment.START_GAP_MM`` from the headers') from the headers too, as
    ``register``'s affine-first models: the one whose local correlation over the fixed head is
    higher (``plain``: the working images) is kept. Returns the kept start, the moving grid pulled
    back through it, the fitted affine, its record and the record of the choice (or None). The
    headers' fit draws its lattices from a copy of the generator as it was before the first fit, so
    a run that keeps the head centres goes on exactly as one that never tried the headers, and one
    that keeps the headers as if it had started from them."""
    header, choice = None, None
    if config.center_of_mass and not config.initial_transform:
        header, choice = header_start(plain[0], fixed_grid, plain[1], moving_grid, linear, c_fix)
    spare = None if header is None else torch.Generator().set_state(generator.get_state())  # before the first fit

    def fit_from(start, gen):
        moving_at = moving_grid.pulled_back(start.homogeneous()[0].detach().cpu().numpy())
        return (start, moving_at, *_fit_affine(config, coarse, fixed_grid, moving_at, region, masks, similarity, gen))

    tries = [fit_from(linear, generator)]
    if header is None:
        return (*tries[0], choice)
    tries.append(fit_from(header, spare))
    chosen = keep_better_start(
        choice,
        [
            local_fit(plain[0], fixed_grid, plain[1], moving_grid, Compose([start, _on_cpu(fitted)]), masks[0])
            for start, _, fitted, _ in tries
        ],
    )
    if chosen:
        generator.set_state(spare.get_state())
    return (*tries[chosen], choice)


def _choose(
    fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_at: Grid, affine, mask
) -> tuple[str, dict]:
    """``--metric auto``: the similarity of the pair as it stands (regode.contrast)."""
    with torch.no_grad():
        points = fixed_grid.world_points(dtype=fixed.dtype, device=fixed.device)[None]
        moved = sample(moving, moving_at, points if affine is None else affine(points))
    return choose_similarity(fixed[0, 0], moved[0, 0], None if mask is None else mask[0, 0] > 0.5)


def _fine_stage(config: FitConfig, fixed: Image, moving: Image, spacing: float, linear, masks, device, similarity: str):
    """The fine level's stage: images at ``spacing`` mm, a lattice of every ``config.stride``-th
    voxel over the fixed foreground."""
    fixed_f, fine_grid = working_image(fixed, spacing, device)
    moving_f, moving_grid = working_image(moving, spacing, device)
    moving_at = moving_grid.pulled_back(linear.homogeneous()[0].detach().cpu().numpy())
    fine_masks = (working_mask(masks[0], fine_grid, device), working_mask(masks[1], moving_grid, device))
    region = region_of(fixed_f if fine_masks[0] is None else fixed_f * fine_masks[0], fine_grid, config.margin)
    if similarity == "features":  # MIND (content is refused with a fine level): descriptors at the fine spacing
        fixed_f, moving_f = feature_volumes(config, fixed_f, moving_f)
    return fitting.Stage(
        name=f"fine:{spacing:g}mm:{config.stride}", fixed=fixed_f, fixed_grid=fine_grid, moving=moving_f,
        moving_grid=moving_at, lattice=lambda gen: downsize(region, config.stride, gen).to(device),
        iterations=config.fine_iterations, fixed_mask=fine_masks[0], moving_mask=fine_masks[1],
    )  # fmt: skip


def _images(
    config: FitConfig, fixed: torch.Tensor, moving: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The images the fit compares: ``fine`` (the working images, or their feature volumes for a
    feature metric) and, for the coarse iterations and the affine stage, ``coarse`` (smoothed)."""
    if config.metric in FEATURE_METRICS:
        fixed, moving = feature_volumes(config, fixed, moving)
    images = {"fine": (fixed, moving)}
    if config.coarse_iterations or config.affine:
        sigma = [0.8 * config.stride] * 3
        images["coarse"] = (blur(fixed, sigma), blur(moving, sigma))
    return images


def _run(fit: fitting.Fit, stages: list, generator: torch.Generator, progress_bar, label: str) -> dict:
    """:func:`regode.fitting.run` with a progress bar task named ``label``; the fit's record."""
    task = progress_bar.add_task(label, total=sum(s.iterations for s in stages), info="")
    return fitting.run(
        fit, stages, generator, lambda loss: progress_bar.update(task, advance=1, info=f"loss {loss:.4f}")
    )


def _evaluate(mapping: Compose, grid: Grid, diffeomorphic: bool) -> tuple[DisplacementField, DisplacementField | None]:
    """The fitted mapping as a displacement field on ``grid`` (and its inverse, for a velocity
    field), on the CPU whatever device fitted it (as the images it is applied to)."""
    with torch.no_grad():
        forward = DisplacementField(grid, mapping.displacement(grid).cpu())
        inverse = DisplacementField(grid, mapping.inverse().displacement(grid).cpu()) if diffeomorphic else None
    return forward, inverse


def fit_images(fixed: Image, moving: Image, config: FitConfig, progress: bool = False, masks=(None, None)) -> Result:
    """Fit the neural field(s) of ``config`` to register ``moving`` to ``fixed``; ``masks``: the
    fixed and moving mask images (or None), only points inside count."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device, generator = resolve_device(config.device), torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    fixed_w, fixed_grid = working_image(fixed, config.spacing, device)
    moving_w, moving_grid = working_image(moving, config.spacing, device)
    c_fix, c_mov = head_center(fixed_w, fixed_grid), head_center(moving_w, moving_grid)
    linear = initial_linear(config.initial_transform, config.center_of_mass, c_fix, c_mov)
    hint = "give --initial-transform" if config.center_of_mass else "add --center-of-mass, or give --initial-transform"
    check_overlap(fixed_w, fixed_grid, moving_w, moving_grid, linear, hint)
    plain = fixed_w, moving_w  # the working images (before any feature volumes), for judging the starts
    # sampling the moving image at linear(y) = sampling it on its grid pulled back through linear
    moving_at = moving_grid.pulled_back(linear.homogeneous()[0].detach().cpu().numpy())
    raw_masks, masks = masks, (working_mask(masks[0], fixed_grid, device), working_mask(masks[1], moving_grid, device))
    region = region_of(fixed_w if masks[0] is None else fixed_w * masks[0], fixed_grid, config.margin)
    images = _images(config, fixed_w, moving_w)
    fixed_w, moving_w = images["fine"]  # from here on feature volumes, for a feature metric
    fine = fine_spacing(config.fine_spacing, fixed.grid, config.spacing)
    timings["preprocess"] = time.perf_counter() - start
    similarity = "features" if config.metric in FEATURE_METRICS else config.metric
    records, affine, start_choice = [], None, None
    if config.affine:  # a linear stage first, on the coarse lattice, as ANTs' Affine before SyN
        t0 = time.perf_counter()
        linear, moving_at, affine, record, start_choice = _affine_stage(
            config, coarse=images["coarse"], plain=plain, fixed_grid=fixed_grid, moving_grid=moving_grid, region=region,
            masks=masks, similarity=similarity, generator=generator, linear=linear, c_fix=c_fix,
        )  # fmt: skip
        records.append(record)
        timings["affine"] = time.perf_counter() - t0

    choice = None
    if similarity == "auto":  # as the pair stands after the start and the affine stage
        similarity, choice = _choose(fixed_w, fixed_grid, moving_w, moving_at, affine, masks[0])
    objective = fitting.Objective(
        similarity, config.ncc_window, config.lambda_fold, config.lambda_grad, config.lambda_bending
    )
    fields: list[FieldTransform] = []
    with bar(progress) as progress_bar:
        for number, stages in enumerate(_plan(config, images, fixed_grid, moving_at, region, device, masks), 1):
            t0 = time.perf_counter()
            for f in fields:
                f.requires_grad_(False)
            network = NeuralField(fixed_grid, config.network).to(device)
            fields.append(FieldTransform(network, config.diffeomorphic, config.integration_steps, config.solver))
            fit = fitting.Fit(Compose(fields), objective, config.lr, after=affine)
            records.append(_run(fit, stages, generator, progress_bar, f"field {number} ({stages[-1].name})"))
            timings[f"field{number}"] = time.perf_counter() - t0
        if (
            fine is not None
        ):  # the last field fitted on at the fine spacing (a continuous field: evaluated on the working grid)
            t0 = time.perf_counter()
            stage = _fine_stage(config, fixed, moving, fine, linear, raw_masks, device, similarity)
            fit = fitting.Fit(Compose(fields), objective, config.lr, after=affine)
            records.append(_run(fit, [stage], generator, progress_bar, f"fine level ({fine:g} mm)"))
            timings["fine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    forward, inverse = _evaluate(Compose(fields), fixed_grid, config.diffeomorphic)
    timings["evaluate"] = time.perf_counter() - t0
    if affine is not None:  # moving points are linear(affine(y)): the affine is applied first
        linear = Compose([linear, _on_cpu(affine)]).as_affine()
    timings["total"] = time.perf_counter() - start
    stats = {
        "timings_s": timings,
        "device": str(device),
        "working_spacing_mm": config.spacing,
        "fine_spacing_mm": fine,
        "metric": similarity,
        "metric_choice": choice,
        "start_choice": start_choice,
        "sample_region": {"size": region.size, "origin": region.origin},
        "fit": records,
    }
    return Result(linear, forward, stats, inverse)
