"""The one per-pair optimiser: Adam on a transform's parameters, so that the moving image sampled
through the transform matches the fixed image on lattices of points.

``regode register``'s polish (after each network) and ``regode fit-field`` (neural fields) are both
this loop; they differ in the transform they fit, the images, lattices and schedule of each
:class:`Stage`, and the :class:`Objective`. At a step, for the lattice's fixed points ``x`` (world
mm):

    y = T(x) [+ base(x)],  loss = similarity(fixed(x), moving(after(y)))
                                  + lambda_fold fold(J_y) + lambda_grad ||J_T - I||^2 + lambda_bending B(y)

where ``moving`` is sampled on the moving grid pulled back through the linear start (so sampling
it at ``y`` samples the moving image at ``start(y)``). Deterministic for a generator's seed (the
lattices' random offsets come from it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import RegodeError
from .grid import Grid
from .lattice import Lattice
from .losses import (
    bending_energy,
    folding_penalty,
    jacobian_energy,
    lattice_jacobian,
    local_ncc,
    mattes_mutual_information,
)
from .optim import Adam
from .sampling import sample, sample_on_grid
from .transforms import Transform

SIMILARITIES = ("mi", "ncc", "mse", "features")


MIN_SAMPLES = 64
"""fewer lattice points than this inside the masks: the masks are ignored for that step."""


def similarity(
    name: str, fixed: torch.Tensor, moved: torch.Tensor, window: int = 5, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """A loss (lower is better) between sampled fixed and moved values ``[B, C, d, h, w]``: minus
    Mattes mutual information (``mi``), minus local NCC over ``window`` lattice points (``ncc``),
    the mean squared difference (``mse``) or the squared distance of feature vectors (``features``,
    summed over channels). ``keep`` (``[B, 1, d, h, w]``, boolean): the points that count (masks);
    local NCC counts the windows centred on them.

    Images of several channels (T1 and FLAIR of one subject against another's) are compared channel
    by channel, as ANTs sums its ``-m`` metrics: ``name`` is one similarity for every channel or one
    per channel joined by ``+`` (``ncc+mi``), and the loss is the channels' mean."""
    if keep is not None and int(keep.sum()) < MIN_SAMPLES:
        keep = None
    names = name.split("+")
    if name != "features" and (fixed.shape[1] > 1 or len(names) > 1):
        if len(names) not in (1, fixed.shape[1]):
            raise ValueError(f"{len(names)} similarities ({name}) for {fixed.shape[1]} channels")
        names = names * fixed.shape[1] if len(names) == 1 else names
        losses = [similarity(n, fixed[:, c : c + 1], moved[:, c : c + 1], window, keep) for c, n in enumerate(names)]
        return torch.stack(losses).mean()
    if name == "features":
        distance = (moved - fixed).square().sum(1, keepdim=True)
        return distance.mean() if keep is None else distance[keep].mean()
    if name == "mi":
        if keep is None:
            return -mattes_mutual_information(moved, fixed)
        return -mattes_mutual_information(moved[keep.expand_as(moved)], fixed[keep.expand_as(fixed)])
    if name == "ncc":
        return -local_ncc(moved, fixed, window, keep)
    distance = (moved - fixed).square()
    return distance.mean() if keep is None else distance[keep.expand_as(distance)].mean()


@dataclass(frozen=True)
class Objective:
    """What a fit minimises (see the module doc)."""

    similarity: str = "mi"
    """one of :data:`SIMILARITIES`, or one per channel joined by ``+`` (:func:`similarity`)."""
    ncc_window: int = 5
    lambda_fold: float = 0.0
    lambda_grad: float = 0.0
    lambda_bending: float = 0.0

    def __post_init__(self):
        if any(name not in SIMILARITIES for name in self.similarity.split("+")):
            raise ValueError(f"unknown similarity {self.similarity!r}: one of {', '.join(SIMILARITIES)}")

    @property
    def needs_jacobian(self) -> bool:
        return bool(self.lambda_fold or self.lambda_grad)


@dataclass
class Stage:
    """A stretch of a fit: ``iterations`` Adam steps on one pair of images and one kind of lattice."""

    name: str
    fixed: torch.Tensor
    """the fixed image (or feature volume) ``[1, C, nz, ny, nx]`` on ``fixed_grid``."""
    fixed_grid: Grid
    moving: torch.Tensor
    moving_grid: Grid
    """the moving grid pulled back through the linear start."""
    lattice: Callable[[torch.Generator], Lattice]
    """draws the step's lattice (world points) from the fit's generator."""
    iterations: int
    decay: bool = False
    """the learning rate decays linearly to a tenth over the stage (else it stays)."""
    fixed_mask: torch.Tensor | None = None
    """``[1, 1, ...]`` on ``fixed_grid``: only lattice points inside (> 0.5) count (ANTs' ``-x``)."""
    moving_mask: torch.Tensor | None = None
    """``[1, 1, ...]`` on ``moving_grid``: only points that map inside count."""


@dataclass
class Fit:
    """A transform to fit and how: ``transform`` maps lattice points (its trainable parameters are
    the unknowns), ``after`` (fixed) maps its result before the moving image is sampled, ``base``
    (fixed) adds a displacement that the transform corrects (folding is measured on the sum, the
    smoothness term on the transform alone)."""

    transform: Transform
    objective: Objective
    lr: float
    scales: list = field(default_factory=list)
    """per trainable parameter, a factor of ``lr`` (default 1): unknowns of different units."""
    after: Transform | None = None
    base: Transform | None = None
    log_every: int = 10


def run(
    fit: Fit, stages: list[Stage], generator: torch.Generator, progress: Callable[[float], None] | None = None
) -> dict:
    """Optimise ``fit.transform``'s trainable parameters in place through ``stages``; the record:
    per stage its iterations and losses every ``log_every`` steps (and the last)."""
    params = [p for p in fit.transform.parameters() if p.requires_grad]
    adam = Adam(params, scales=fit.scales or None)
    record = {"stages": [], "iterations": 0}
    for stage in stages:
        history = []
        for it in range(stage.iterations):
            loss, sim = _loss(fit, stage, stage.lattice(generator))
            loss.backward()
            adam.step(fit.lr * (1.0 - 0.9 * it / max(1, stage.iterations - 1) if stage.decay else 1.0))
            if not torch.isfinite(loss):
                raise RegodeError(
                    f"the fit diverged (non-finite loss at {stage.name}, step {it}): lower the learning rate "
                    "(fit-field --lr) or raise the regularisation"
                )
            if it % fit.log_every == 0 or it == stage.iterations - 1:
                history.append({"iteration": it, "loss": float(loss.detach()), "similarity": float(sim.detach())})
            if progress is not None:
                progress(float(loss.detach()))
        record["stages"].append({"name": stage.name, "iterations": stage.iterations, "history": history})
        record["iterations"] += stage.iterations
    return record


def _fixed_values(volume: torch.Tensor, grid: Grid, lattice: Lattice) -> torch.Tensor:
    """A fixed volume at the lattice's points: on a lattice that is a grid (regode.lattice.downsize),
    by :func:`sample_on_grid` (separable interpolation where the grids are parallel, as a downsized
    lattice of the fixed grid is: several times faster than at the points)."""
    if lattice.grid is not None and lattice.points.shape[0] == 1:
        return sample_on_grid(volume, grid, lattice.grid)
    return sample(volume, grid, lattice.points)


def _loss(fit: Fit, stage: Stage, lattice: Lattice) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its similarity term at one lattice."""
    objective = fit.objective
    own = mapped = fit.transform.map_lattice(lattice)
    if fit.base is not None:
        mapped = mapped + fit.base.displacement_at(lattice).detach().to(mapped.dtype)
    at = fit.after(mapped) if fit.after is not None else mapped
    keep = None
    with torch.no_grad():
        if stage.fixed_mask is not None:
            keep = _fixed_values(stage.fixed_mask, stage.fixed_grid, lattice) > 0.5
        if stage.moving_mask is not None:
            inside = sample(stage.moving_mask, stage.moving_grid, at.detach()) > 0.5
            keep = inside if keep is None else keep & inside
    sim = similarity(
        objective.similarity,
        _fixed_values(stage.fixed, stage.fixed_grid, lattice),
        sample(stage.moving, stage.moving_grid, at),
        objective.ncc_window,
        keep,
    )
    loss = sim
    if objective.needs_jacobian:
        jacobian = lattice_jacobian(mapped, lattice.step)
        smooth = jacobian if fit.base is None else lattice_jacobian(own, lattice.step)
        loss = (
            loss + objective.lambda_fold * folding_penalty(jacobian) + objective.lambda_grad * jacobian_energy(smooth)
        )
    if objective.lambda_bending:
        loss = loss + objective.lambda_bending * bending_energy(mapped, lattice.step)
    return loss, sim
