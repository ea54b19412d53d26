"""``regode fit-field``: per-pair neural-field registration (NIR).

A neural field ``u`` is optimised with Adam for one pair so that the moving image sampled at
``linear(x + u(x))`` matches the fixed image at the fixed points ``x`` drawn by a sampler, with a
folding penalty and a smoothness term on the mapping's finite-difference Jacobian. With
``diffeomorphic`` the field is a stationary velocity, integrated over [0, 1].

The hybrid sampler runs two phases: a field on the downsize sampler, then, that field frozen, a
second field on mini-patches; the final mapping is ``phi_1(phi_2(x))`` (points meet the second,
finer field first). The result is evaluated on the fixed working grid and written like
``register``'s: ``-t PREFIX1Warp.nii.gz -t PREFIX0GenericAffine.mat``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..errors import RegodeError
from ..grid import Grid
from ..io import Image
from ..losses import bending_energy, folding_penalty, jacobian_energy, lattice_jacobian, local_ncc, mattes_mutual_information
from ..optim import Adam
from ..pipeline import Result, initial_linear, output_paths, read_inputs, resolve_device, working_image, write_outputs
from ..sampling import sample
from ..transforms import Affine, Compose, DisplacementField
from .fields import FieldConfig, NeuralField, flow
from .samplers import Lattice, downsize, patches, region_of

SAMPLERS = ("downsize", "patch", "hybrid")
METRICS = ("mi", "ncc", "mse", "content", "mind")
FEATURE_METRICS = ("content", "mind")  # compared as feature volumes computed once per image
SOLVERS = ("euler", "midpoint", "rk4")


@dataclass
class FitConfig:
    """Everything that defines a fit (saved in ``PREFIXregode.json``)."""

    diffeomorphic: bool = False
    """the field is a stationary velocity integrated over [0, 1] (else a displacement)."""
    sampler: str = "downsize"
    metric: str = "mi"
    """mi: mutual information (any contrasts); content: the learned content features (any
    contrasts); mind: MIND descriptors (any contrasts); ncc: local NCC (same contrast); mse."""
    encoder: str | None = None
    """content metric: the encoder checkpoint (None: the shipped ``weights/encoder.pt``)."""
    iterations: int = 60
    """Adam steps of the (first) field."""
    coarse_iterations: int = 100
    """Adam steps of the first field before ``iterations``, on a lattice twice as coarse and on
    smoothed images (downsize and hybrid samplers): coarse-to-fine, cheaply."""
    refine_iterations: int = 20
    """Adam steps of the hybrid sampler's second field (mini-patches)."""
    lr: float = 4e-2
    spacing: float = 2.0
    """working grid spacing (mm): both images are resampled to it, the result is evaluated on it."""
    stride: int = 3
    """downsize sampler: one point in ``stride`` along each axis of the working grid."""
    patch_size: int = 16
    patches: int = 4
    margin: float = 10.0
    """samples are drawn in the fixed image's foreground box grown by this (mm)."""
    ncc_window: int = 5
    """local NCC window, in lattice points."""
    lambda_fold: float = 10.0
    lambda_grad: float = 5.0
    lambda_bending: float = 0.0
    solver: str = "euler"
    integration_steps: int = 6
    network: FieldConfig = field(default_factory=FieldConfig)
    affine: bool = False
    """first fit an affine map (12 parameters, on the coarse lattice), then the fields after it:
    for pairs not linearly aligned yet (e.g. two subjects); it goes into PREFIX0GenericAffine.mat."""
    affine_iterations: int = 100
    center_of_mass: bool = False
    """start from the centres-of-mass translation (off: a deformable fit expects roughly aligned images)."""
    initial_transform: list = field(default_factory=list)
    """linear transform specs (antsApplyTransforms order), e.g. ``register``'s 0GenericAffine.mat."""
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    inverse_iterations: int = 30

    def check(self) -> None:
        for name, value, allowed in (("sampler", self.sampler, SAMPLERS), ("metric", self.metric, METRICS),
                                     ("solver", self.solver, SOLVERS)):
            if value not in allowed:
                raise RegodeError(f"unknown {name} {value!r}: choose from {', '.join(allowed)}")
        for name in ("spacing", "lr"):
            value = getattr(self, name)
            if not value > 0 or value != value:
                raise RegodeError(f"--{name} must be a positive number, not {value}")
        if self.stride < 1 or self.patch_size < 2 or self.patches < 1 or self.coarse_iterations < 0 or self.integration_steps < 1:
            raise RegodeError("--stride, --patches and --integration-steps must be at least 1, --patch-size at least 2, --coarse-iterations at least 0")
        if self.iterations < 1 or (self.sampler == "hybrid" and self.refine_iterations < 1):
            raise RegodeError("--iterations (and --refine-iterations for hybrid) must be at least 1")
        self.network.check()

    @classmethod
    def from_dict(cls, values: dict) -> "FitConfig":
        values = dict(values)
        values["network"] = FieldConfig(**values.get("network", {}))
        return cls(**values)


class AffineFit(torch.nn.Module):
    """``y -> (I + 0.1 D)(y - c) + c + 10 t`` about ``c`` (mm), starting at the identity; the
    factors give matrix entries and millimetres comparable steps under one learning rate."""

    def __init__(self, center):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.D = torch.nn.Parameter(torch.zeros(3, 3))
        self.t = torch.nn.Parameter(torch.zeros(3))

    def matrix(self) -> torch.Tensor:
        return torch.eye(3, device=self.D.device) + 0.1 * self.D

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.center) @ self.matrix().T + self.center + 10 * self.t

    def as_affine(self) -> Affine:
        m = self.matrix().detach().double().cpu()
        return Affine(m, (10 * self.t).detach().double().cpu()[None], self.center.double().cpu()[None])


def mapping(fields: list[NeuralField], points: torch.Tensor, config: FitConfig, inverse: bool = False) -> torch.Tensor:
    """Images of fixed ``points`` under ``fields[0] o fields[1] o ...`` (the last field meets the
    points first), or of moving-side points under its inverse (diffeomorphic fields only)."""
    if inverse and not config.diffeomorphic:
        raise ValueError("only velocity fields have a closed-form inverse")
    order = fields if inverse else list(reversed(fields))
    for f in order:
        if config.diffeomorphic:
            points = flow(f, points, config.integration_steps, config.solver, reverse=inverse)
        else:
            points = points + f(points)
    return points


def similarity(metric: str, fixed: torch.Tensor, moved: torch.Tensor, window: int) -> torch.Tensor:
    """A loss (lower is better) between sampled fixed and moved intensities ``[B, 1, d, h, w]``
    (feature metrics: features ``[B, C, d, h, w]``, already scaled by :func:`feature_volumes`)."""
    if metric in FEATURE_METRICS:
        return (moved - fixed).square().sum(1).mean()
    if metric == "mi":
        return -mattes_mutual_information(moved, fixed)
    if metric == "ncc":
        return -local_ncc(moved, fixed, window)
    return (moved - fixed).square().mean()


def feature_volumes(config: FitConfig, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed and moving feature volumes of a feature metric, both divided by the square root of
    the fixed features' total variance over the head, so that the loss is about 2 between unrelated
    features and 0 at a perfect match, whatever the metric."""
    head = fixed[0, 0] > 0.05
    if config.metric == "content":
        from ..encoder.features import content_volume
        from ..encoder.train import load_encoder

        model, _ = load_encoder(config.encoder, config.spacing)
        model = model.to(fixed.device)
        slices = model.config.slices
        fixed_f, moving_f = content_volume(model.content, fixed, slices), content_volume(model.content, moving, slices)
        fixed_f, moving_f = principal_components(fixed_f, moving_f, head, CONTENT_COMPONENTS)
    else:
        from ..encoder.features import mind

        fixed_f, moving_f = mind(fixed), mind(moving)
    values = fixed_f[0].flatten(1)[:, head.flatten()] if bool(head.any()) else fixed_f[0].flatten(1)
    scale = values.var(dim=1).sum().clamp(min=1e-8).sqrt()
    return fixed_f / scale, moving_f / scale


CONTENT_COMPONENTS = 8
"""the content features enter fit-field as their first 8 principal components over the fixed head:
94 % of the variance of the 32 channels on a BraTS T1, at a quarter of the sampling cost."""


def principal_components(fixed: torch.Tensor, moving: torch.Tensor, head: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _lattice(kind: str, region: Grid, stride: int, config: FitConfig, generator: torch.Generator, device) -> Lattice:
    lat = downsize(region, stride, generator) if kind == "downsize" else patches(region, config.patch_size, config.patches, generator)
    return Lattice(lat.points.to(device), lat.step.to(device))


def evaluate_on(grid: Grid, fields: list[NeuralField], config: FitConfig, inverse: bool = False, slab_voxels: int = 1 << 18) -> torch.Tensor:
    """The mapping's displacement ``[1, 3, nz, ny, nx]`` (mm) at every voxel of ``grid``."""
    device = next(fields[0].parameters()).device
    out = torch.empty(1, 3, *grid.shape, dtype=torch.float32)
    nz, ny, nx = grid.shape
    step = max(1, slab_voxels // (ny * nx))
    with torch.no_grad():
        for k in range(0, nz, step):
            slab = slice(k, k + step)
            points = grid.world_points(torch.float32, device, slab)
            if config.diffeomorphic:
                moved = mapping(fields, points, config, inverse)
            else:  # the last field meets the grid's own points: evaluate it separably
                moved = mapping(fields[:-1], points + fields[-1].on_grid(grid, slab), config)
            out[0, :, k : k + step] = (moved - points).movedim(-1, 0).cpu()
    return out


def fit_images(fixed: Image, moving: Image, config: FitConfig, progress: bool = False) -> Result:
    """Fit the neural field(s) of ``config`` to register ``moving`` to ``fixed``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..odenet.preprocess import blur, center_of_mass

    config.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    fixed_w, fixed_grid = working_image(fixed, config.spacing, device)
    moving_w, moving_grid = working_image(moving, config.spacing, device)
    c_fix, c_mov = center_of_mass(fixed_w, fixed_grid), center_of_mass(moving_w, moving_grid)

    linear = initial_linear(config.initial_transform, config.center_of_mass, c_fix, c_mov)
    # sampling the moving image at linear(y) = sampling it on its grid pulled back through linear
    moving_at = moving_grid.pulled_back(linear.homogeneous()[0].detach().cpu().numpy())
    region = region_of(fixed_w, fixed_grid, config.margin)
    if config.metric in FEATURE_METRICS:  # from here on the "images" are feature volumes
        fixed_w, moving_w = feature_volumes(config, fixed_w, moving_w)
    timings["preprocess"] = time.perf_counter() - start

    # fields, each a list of stages (sampler, stride, fixed, moving, iterations); the coarse stage
    # sees images smoothed for its lattice (anti-aliasing), as the shrink levels of ANTs
    factor, sigma = 2 * config.stride, [0.8 * config.stride] * 3
    coarse = (blur(fixed_w, sigma), blur(moving_w, sigma)) if config.coarse_iterations or config.affine else None
    first = [("downsize", config.stride, fixed_w, moving_w, config.iterations)]
    if config.coarse_iterations:
        first.insert(0, ("downsize", factor, *coarse, config.coarse_iterations))
    patch = [("patch", 1, fixed_w, moving_w, config.iterations if config.sampler == "patch" else config.refine_iterations)]
    plan = {"downsize": [first], "patch": [patch], "hybrid": [first, patch]}[config.sampler]
    fields: list[NeuralField] = []
    history = []
    affine = AffineFit(region.center).to(device) if config.affine else None
    if affine is not None:  # a linear stage first, on the coarse lattice, as ANTs' Affine before SyN
        t0 = time.perf_counter()
        fix_img, mov_img = coarse
        optimizer = Adam(affine.parameters())
        for it in range(config.affine_iterations):
            lattice = _lattice("downsize", region, factor, config, generator, device)
            loss = similarity(config.metric, sample(fix_img, fixed_grid, lattice.points),
                              sample(mov_img, moving_at, affine(lattice.points)), config.ncc_window)
            loss.backward()
            optimizer.step(config.lr)
            if it % 10 == 0 or it == config.affine_iterations - 1:
                history.append({"field": 0, "stride": factor, "iteration": it, "loss": float(loss.detach())})
        affine.requires_grad_(False)
        timings["affine"] = time.perf_counter() - t0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for number, stages in enumerate(plan, 1):
            t0 = time.perf_counter()
            for f in fields:
                f.requires_grad_(False)
            current = NeuralField(fixed_grid, FieldConfig(**asdict(config.network))).to(device)
            fields.append(current)
            optimizer = Adam(current.parameters())
            task = bar.add_task(f"field {number} ({stages[-1][0]})", total=sum(s[-1] for s in stages), info="")
            for kind, stride, fix_img, mov_img, iterations in stages:
                for it in range(iterations):
                    lattice = _lattice(kind, region, stride, config, generator, device)
                    moved_points = mapping(fields, lattice.points, config)
                    fixed_values = sample(fix_img, fixed_grid, lattice.points)
                    moved_values = sample(mov_img, moving_at, affine(moved_points) if affine is not None else moved_points)
                    sim = similarity(config.metric, fixed_values, moved_values, config.ncc_window)
                    jac = lattice_jacobian(moved_points, lattice.step)
                    loss = sim + config.lambda_fold * folding_penalty(jac) + config.lambda_grad * jacobian_energy(jac)
                    if config.lambda_bending:
                        loss = loss + config.lambda_bending * bending_energy(moved_points, lattice.step)
                    loss.backward()
                    optimizer.step(config.lr)
                    if not torch.isfinite(loss):
                        raise RegodeError("the fit diverged (non-finite loss): lower --lr or raise the regularisation")
                    if it % 10 == 0 or it == iterations - 1:
                        history.append({"field": number, "stride": stride, "iteration": it, "loss": float(loss.detach()),
                                        "similarity": float(sim.detach())})
                    bar.update(task, advance=1, info=f"loss {float(loss.detach()):.4f}")
            timings[f"field{number}_{kind}"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    forward = DisplacementField(fixed_grid, evaluate_on(fixed_grid, fields, config))
    inverse = DisplacementField(fixed_grid, evaluate_on(fixed_grid, fields, config, inverse=True)) if config.diffeomorphic else None
    timings["evaluate"] = time.perf_counter() - t0
    if affine is not None:  # moving points are linear(affine(y)): the affine is applied first
        linear = Compose([linear, affine.as_affine()]).as_affine()
    timings["total"] = time.perf_counter() - start
    stats = {"timings_s": timings, "device": str(device), "working_spacing_mm": config.spacing,
             "sample_region": {"size": region.size, "origin": region.origin}, "history": history}
    return Result(linear, forward, stats, inverse)


def fit_files(fixed_path, moving_path, prefix, config: FitConfig, moving_labels=None, progress: bool = False) -> dict:
    """Read, fit, and write ANTs-named outputs at the fixed image's full resolution."""
    from .. import __version__

    start = time.perf_counter()
    config.check()
    paths = output_paths(prefix, True, moving_labels is not None)
    fixed, moving, labels = read_inputs(fixed_path, moving_path, moving_labels, paths)
    read_s = time.perf_counter() - start
    result = fit_images(fixed, moving, config, progress)
    result.stats["timings_s"]["read"] = read_s
    document = {"regode": __version__, "command": "fit-field", "fixed": str(fixed_path), "moving": str(moving_path),
                "moving_labels": str(moving_labels) if moving_labels else None, "config": asdict(config)}
    write_outputs(result, fixed, moving, labels, paths, document, config.inverse_iterations, start)
    return document
