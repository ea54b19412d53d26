"""MS-ODENet: registration as a learned optimiser, d theta/dt = f^(l)(x_mov o phi_theta, x_fix, t).

[0, T] is split into L equal segments; segment l is solved on pyramid level l (coarse to fine)
with its own network and its own solver from the schedule. theta is a world-space (LPS mm)
parameterisation of one of the foundation's transforms, chosen by the model's kind
(regode.odenet.kinds): a rigid motion, B-spline control points or a dense displacement field.

An optional ``pre`` transform (an initial or cascaded linear transform) is applied after theta's
transform, so the result is ``pre(T_theta(x))`` — ANTs' ``-t 1Warp -t 0GenericAffine.mat``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .. import checkpoint
from ..errors import RegodeError
from ..grid import Grid
from ..losses import MutualInformationTo
from ..preprocess import blur
from ..sampling import normalised_map, sample_normalised, sample_on_grid
from ..transforms import Compose, Transform
from .config import ModelConfig, parse_schedule
from .kinds import KINDS

FORMAT = "regode.msodenet"
"""the checkpoint format of MS-ODENet model files (regode.checkpoint)."""


@dataclass
class Level:
    """One pyramid level: a volume ``[B, 1, nz, ny, nx]`` on a grid."""

    volume: torch.Tensor
    grid: Grid


def pyramid(volume: torch.Tensor, grid: Grid, levels: int) -> list[Level]:
    """Image pyramid, coarse to fine: level L is ``volume``; each coarser level halves the
    resolution (Gaussian blur, then linear resampling onto a grid of twice the spacing)."""
    out = [Level(volume, grid)]
    for _ in range(levels - 1):
        prev = out[0]
        coarse = prev.grid.with_spacing(np.asarray(prev.grid.spacing) * 2)
        out.insert(0, Level(sample_on_grid(blur(prev.volume, (1.0, 1.0, 1.0)), prev.grid, coarse), coarse))
    return out


MIN_COARSE = 3
"""voxels along each axis of a pyramid's coarsest level: the networks' convolutions and pooling need them."""


def check_pyramid(grid: Grid, levels: int, what: str) -> None:
    """Refuse, with one line, an image whose working grid is too small for ``levels`` pyramid levels."""
    size = np.asarray(grid.size)
    for _ in range(levels - 1):  # as Grid.with_spacing shrinks a grid by two
        size = np.maximum(1, np.round(size / 2))
    if size.min() < MIN_COARSE:
        least = MIN_COARSE * 2 ** (levels - 1) * float(grid.spacing[0])
        shape = "x".join(str(n) for n in grid.size)
        raise RegodeError(
            f"{what} is too small: its {grid.spacing[0]:g} mm working grid is {shape} voxels; the model's "
            f"{levels} pyramid levels need about {least:g} mm or more along every axis"
        )


class Dynamics(nn.Module):
    """The right-hand side on one level: warp the moving level by theta, ask the level's network."""

    def __init__(self, model: MSODENet, level: int, fixed: Level, moving: Level, state_grid: Grid, center, pre):
        super().__init__()
        self.model, self.net, self.kind = model, model.nets[level], model.kind
        self.fixed, self.moving, self.state_grid, self.center = fixed, moving, state_grid, center
        self.direction = torch.as_tensor(
            fixed.grid.direction_matrix, dtype=fixed.volume.dtype, device=fixed.volume.device
        )
        self.nfe = 0
        self.similarity = MutualInformationTo(fixed.volume.detach())  # the fixed level's Parzen windows, once
        # world -> the moving level's normalised coordinates, after the fixed ``pre`` map: the
        # moving image is sampled at lead(T_theta(x)) without building world points
        to_moving = normalised_map(moving.grid, torch.float64, fixed.volume.device)[None]
        self.lead = to_moving if pre is None else to_moving @ pre.homogeneous().to(torch.float64)  # [1 or B, 4, 4]
        self.kind.prepare(self)
        self.direct = self.kind.direct(self)

    def forward(self, t, theta):
        self.nfe += 1
        coords = self.moving_coordinates(theta)
        # the gradient of the similarity with respect to a displacement of every point the velocity
        # moves (times the number of voxels): the force a classical optimiser would follow, given to the network
        # as an input, as learned optimisers are given their gradient (no second derivatives)
        warped = sample_normalised(self.moving.volume, self.moving.grid, coords)
        # MI reads every step-th voxel only: the gradient is zero elsewhere, so only those points
        # are sampled again, moved by a world displacement u (mm) of the points the velocity moves
        # (the fixed points before theta's motion for a linear kind; x + theta(x) before pre for a
        # field), which pre and theta's linear parts turn into the moving image's space
        flat = coords.reshape(coords.shape[0], -1, 3)
        to_moving = self.kind.pullback(self, theta).transpose(
            -1, -2
        )  # a world displacement (mm, row) -> moving normalised
        with torch.enable_grad():
            u = torch.zeros_like(flat[:, :: self.similarity.step], requires_grad=True)
            moved = flat[:, :: self.similarity.step].detach() + u @ to_moving.to(u.dtype)
            values = sample_normalised(self.moving.volume, self.moving.grid, moved)
            (grad,) = torch.autograd.grad(
                self.similarity.of_samples(values.reshape(values.shape[0], -1)) * values.shape[0], u
            )
        # world -> grid axes, times the voxel count (a per-voxel scale, independent of the image
        # size; it vanishes at the optimum), on the samples before they are spread into the level
        force = torch.zeros_like(flat, dtype=grad.dtype)
        force[:, :: self.similarity.step] = (grad @ self.direction) * flat.shape[1]
        return self.kind.velocity(
            self, t, theta, warped, force.reshape(coords.shape).movedim(-1, 1)
        )  # [B, 3, nz, ny, nx]

    def moving_coordinates(self, theta: torch.Tensor) -> torch.Tensor:
        """``pre(T_theta(x))`` for the fixed level's voxel centres x, in the moving level's
        normalised coordinates: ``[B, nz, ny, nx, 3]``; the kind's fast path from voxel indices
        where it applies, else through world points."""
        if self.direct:
            return self.kind.coordinates(self, theta)
        points = self.model.transform(theta, self.state_grid, self.center).map_grid(self.fixed.grid, dtype=theta.dtype)
        flat = points.reshape(points.shape[0], -1, 3)
        m = self.lead.to(theta.dtype)
        return (flat @ m[:, :3, :3].transpose(-1, -2) + m[:, None, :3, 3]).reshape(points.shape)


class MSODENet(nn.Module):
    """L networks and their solvers; ``forward`` integrates theta from ``theta0`` over [0, T]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.kind = KINDS[config.kind]
        self.nets = nn.ModuleList([self.kind.network(config.width) for _ in range(config.levels)])
        self.solvers = parse_schedule(config.schedule, config.levels)

    def state_grid(self, fine: Grid) -> Grid | None:
        """Where theta lives: the control grid (bspline), the finest level (dense), none (rigid)."""
        return self.kind.state_grid(self.config, fine)

    def identity(self, fine: Grid, batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
        return self.kind.identity(self.config, fine, batch, dtype, device)

    def transform(
        self, theta: torch.Tensor, state_grid: Grid | None, center=None, pre: Transform | None = None
    ) -> Transform:
        core = self.kind.transform(theta, state_grid, center)
        return core if pre is None else Compose([pre, core])

    def forward(
        self,
        fixed: list[Level],
        moving: list[Level],
        theta0: torch.Tensor | None = None,
        center: torch.Tensor | None = None,
        pre: Transform | None = None,
        adjoint: bool = False,
        levels: int | None = None,
    ):
        """Integrate the ODE level by level: the first ``levels`` pyramid levels (coarse first; None:
        all), so that theta stops at time ``levels * T / L``. Returns (theta, number of function
        evaluations per level run)."""
        from torchdiffeq import odeint, odeint_adjoint  # 0.25 s to import: not for commands that never integrate

        if len(fixed) != self.config.levels or len(moving) != self.config.levels:
            raise ValueError(f"the model needs {self.config.levels} pyramid levels")
        levels = self.config.levels if levels is None else levels
        if not 1 <= levels <= self.config.levels:
            raise ValueError(f"the model integrates 1 to {self.config.levels} levels, not {levels}")
        fine = fixed[-1].grid
        state_grid = self.state_grid(fine)
        dtype, device = fixed[-1].volume.dtype, fixed[-1].volume.device
        batch = max(fixed[-1].volume.shape[0], moving[-1].volume.shape[0])
        theta = self.identity(fine, batch, dtype, device) if theta0 is None else theta0
        if center is None:
            center = torch.as_tensor(fine.center, dtype=dtype, device=device).expand(batch, 3)
        segment = self.config.horizon / self.config.levels
        nfe = []
        for level, solver in enumerate(self.solvers[:levels]):
            dyn = Dynamics(self, level, fixed[level], moving[level], state_grid, center, pre)
            times = torch.tensor([level * segment, (level + 1) * segment], dtype=dtype, device=device)
            if adjoint:
                theta = odeint_adjoint(
                    dyn, theta, times, adjoint_params=tuple(dyn.net.parameters()), **solver.kwargs()
                )[-1]
            else:
                theta = odeint(dyn, theta, times, **solver.kwargs())[-1]
            nfe.append(dyn.nfe)
        return theta, nfe


def load_model(path, kind: str | None = None) -> tuple[MSODENet, dict]:
    """The MS-ODENet stored in ``path`` (eval mode) and its checkpoint document; ``kind`` checks
    that it is of that kind."""
    model, document = checkpoint.load_network(path, FORMAT, "MS-ODENet", ModelConfig, MSODENet)
    if kind is not None and model.config.kind != kind:
        raise RegodeError(f"{path} holds a {model.config.kind} model, a {kind} model is needed here")
    return model, document
