"""MS-ODENet: registration as a learned optimiser, d theta/dt = f^(l)(x_mov o phi_theta, x_fix, t).

[0, T] is split into L equal segments; segment l is solved on pyramid level l (coarse to fine)
with its own network and its own solver from the schedule. theta is a world-space (LPS mm)
parameterisation of one of the foundation's transforms:

- rigid: ``[B, 6]`` rotation vector (rad) and translation (mm) about a centre (a :class:`Rigid`);
- bspline: ``[B, 3, *control]`` control-point displacements in mm (a :class:`BSpline`);
- dense: ``[B, 3, nz, ny, nx]`` displacements in mm on the finest level (a :class:`DisplacementField`).

An optional ``pre`` transform (an initial or cascaded linear transform) is applied after theta's
transform, so the result is ``pre(T_theta(x))`` — ANTs' ``-t 1Warp -t 0GenericAffine.mat``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from ..grid import Grid
from ..losses import MutualInformationTo
from ..sampling import normalised_map, sample, sample_normalised, sample_on_grid
from ..transforms import BSpline, Compose, DisplacementField, Rigid, Transform, rotation_matrix
from .networks import NETWORKS
from .preprocess import blur

KINDS = ("rigid", "bspline", "dense")
DEFAULT_SCHEDULE = "F(0.25)-F(0.25)-F(0.5)"  # every kind: 4 + 4 + 2 function evaluations
SOLVERS = {"F": "euler", "A": "adaptive_heun", "R": "rk4"}


@dataclass(frozen=True)
class Solver:
    """One level's solver: ``F(dt)`` Euler with a fixed step, ``R(dt)`` fixed-step Runge-Kutta 4,
    ``A(tol)`` adaptive Heun with relative and absolute tolerance ``tol``."""

    letter: str
    value: float

    @property
    def method(self) -> str:
        return SOLVERS[self.letter]

    def kwargs(self) -> dict:
        if self.letter == "A":
            return {"method": self.method, "rtol": self.value, "atol": self.value}
        return {"method": self.method, "options": {"step_size": self.value}}

    def __str__(self) -> str:
        return f"{self.letter}({self.value:g})"


def parse_schedule(text: str, levels: int) -> list[Solver]:
    """``"A(1e-3)-A(1e-3)-F(0.1)"`` -> one :class:`Solver` per level (coarse to fine)."""
    # tolerances such as 1e-3 contain '-': read the levels as LETTER(number) tokens
    parts = re.findall(r"([FAR])\(\s*([0-9.eE+-]+)\s*\)", text)
    rebuilt = "-".join(f"{a}({b})" for a, b in parts)
    if not parts or rebuilt.replace(" ", "") != text.replace(" ", ""):
        raise ValueError(f"bad solver schedule {text!r}: write e.g. A(1e-3)-A(1e-3)-F(0.1) (F Euler, R rk4, A adaptive Heun)")
    if len(parts) != levels:
        raise ValueError(f"solver schedule {text!r} has {len(parts)} levels, the model has {levels}")
    solvers = [Solver(letter, float(value)) for letter, value in parts]
    if any(s.value <= 0 for s in solvers):
        raise ValueError(f"solver steps and tolerances must be positive in {text!r}")
    return solvers


@dataclass
class ModelConfig:
    """Everything that defines an MS-ODENet (saved in every checkpoint)."""

    kind: str = "rigid"
    """rigid, bspline or dense."""
    levels: int = 3
    """pyramid levels L (factor 2 per level)."""
    horizon: float = 3.0
    """integration time T; level l is solved on [(l-1)T/L, lT/L]."""
    schedule: str = ""
    """solver per level, coarse to fine (empty: Euler with steps of 0.25, 0.5 on the finest of 3 levels)."""
    spacing: float = 2.0
    """finest working spacing in mm (isotropic)."""
    width: int = 16
    """channels of the first conv layer."""
    control_spacing: float = 20.0
    """B-spline control-point spacing in mm."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, not {self.kind!r}")
        if not self.schedule:
            self.schedule = DEFAULT_SCHEDULE if self.levels == 3 else "-".join(["F(0.25)"] * self.levels)
        parse_schedule(self.schedule, self.levels)

    def to_dict(self) -> dict:
        return asdict(self)


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
        blurred = blur(prev.volume, (1.0, 1.0, 1.0))
        points = coarse.world_points(dtype=volume.dtype, device=volume.device)[None]
        out.insert(0, Level(sample(blurred, prev.grid, points), coarse))
    return out


def _direction(grid: Grid, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(grid.direction_matrix, dtype=like.dtype, device=like.device)


def right_jacobian_inverse(rotvec: torch.Tensor) -> torch.Tensor:
    """J_r^-1 of SO(3) at ``rotvec [B, 3]``: R(phi + J_r^-1 w dt) = R(phi) exp([w] dt)."""
    angle = rotvec.norm(dim=-1)[:, None, None]
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    small = angle < 1e-3
    safe = torch.where(small, torch.ones_like(angle), angle)
    coef = torch.where(small, 1 / 12 + angle**2 / 720, 1 / safe**2 - (1 + torch.cos(safe)) / (2 * safe * torch.sin(safe)))
    return torch.eye(3, dtype=rotvec.dtype, device=rotvec.device) + 0.5 * k + coef * (k @ k)


class Dynamics(nn.Module):
    """The right-hand side on one level: warp the moving level by theta, ask the level's network."""

    def __init__(self, model: "MSODENet", level: int, fixed: Level, moving: Level, state_grid: Grid, center, pre):
        super().__init__()
        self.model, self.net = model, model.nets[level]
        self.fixed, self.moving, self.state_grid, self.center = fixed, moving, state_grid, center
        dtype, device = fixed.volume.dtype, fixed.volume.device
        self.direction = _direction(fixed.grid, fixed.volume)
        self.nfe = 0
        self.similarity = MutualInformationTo(fixed.volume.detach())  # the fixed level's Parzen windows, once
        # world -> the moving level's normalised coordinates, after the fixed ``pre`` map: the
        # moving image is sampled at lead(T_theta(x)) without building world points
        to_moving = normalised_map(moving.grid, torch.float64, device)[None]
        self.lead = to_moving if pre is None else to_moving @ pre.homogeneous().to(torch.float64)  # [1 or B, 4, 4]
        self.world_step = to_moving[:, :3, :3].transpose(-1, -2).to(dtype)  # a world displacement (row) -> normalised
        kind = model.config.kind
        self.direct = kind == "rigid" or state_grid.parallel_to(fixed.grid)
        if kind == "rigid":
            c = torch.as_tensor(center, dtype=torch.float64).detach().cpu().reshape(-1, 3).numpy()
            self.center_index = torch.as_tensor(fixed.grid.world_to_index(c), dtype=dtype, device=device).reshape(-1, 3)
        if kind == "bspline":
            # control points in this level's grid, clamped into its buffer (outer control points
            # take the nearest border features)
            cpts = state_grid.world_points(dtype=torch.float64)
            index = torch.as_tensor(fixed.grid.world_to_index(cpts.reshape(-1, 3).numpy()))
            index = torch.minimum(torch.clamp(index, min=0), torch.as_tensor(fixed.grid.size, dtype=torch.float64) - 1)
            inside = torch.as_tensor(fixed.grid.index_to_world(index.numpy()))
            self.control_points = inside.reshape(1, *cpts.shape[:-1], 3).to(dtype=dtype, device=device)

    def forward(self, t, theta):
        self.nfe += 1
        coords = self.moving_coordinates(theta)
        d = self.direction
        # the gradient of the similarity with respect to a displacement of every fixed point (times
        # the number of voxels): the force a classical optimiser would follow, given to the network
        # as an input, as learned optimisers are given their gradient (no second derivatives)
        warped = sample_normalised(self.moving.volume, self.moving.grid, coords)
        # MI reads every step-th voxel only: the gradient is zero elsewhere, so only those points
        # are sampled again, moved by a world displacement u (mm, in the moving image's space) to differentiate
        flat = coords.reshape(coords.shape[0], -1, 3)
        with torch.enable_grad():
            u = torch.zeros_like(flat[:, :: self.similarity.step], requires_grad=True)
            moved = flat[:, :: self.similarity.step].detach() + u @ self.world_step.to(u.dtype)
            values = sample_normalised(self.moving.volume, self.moving.grid, moved)
            (grad,) = torch.autograd.grad(self.similarity.of_samples(values.reshape(values.shape[0], -1)) * values.shape[0], u)
        force = torch.zeros_like(flat, dtype=grad.dtype)
        force[:, :: self.similarity.step] = grad
        force = (force.reshape(coords.shape) @ d).movedim(-1, 1)  # world -> grid axes, [B, 3, nz, ny, nx]
        force = force * force[0, 0].numel()  # per-voxel scale, independent of the image size; vanishes at the optimum
        kind = self.model.config.kind
        if kind == "rigid":
            # the network's rigid velocity acts in fixed space, before the current motion:
            # phi <- phi o (1 + [omega] dt, t dt), i.e. R <- R exp([omega] dt) and translation += R t dt
            v = self.net(warped, self.fixed.volume, t, force, self.center_index, float(self.fixed.grid.spacing[0]))
            omega, shift = torch.det(d) * v[:, :3] @ d.T, v[:, 3:] @ d.T
            rotvec = theta[:, :3]
            rdot = (right_jacobian_inverse(rotvec) @ omega[..., None])[..., 0]
            return torch.cat([rdot, (rotation_matrix(rotvec) @ shift[..., None])[..., 0]], dim=1)
        if kind == "bspline":
            v = self.net(warped, self.fixed.volume, t, force, lambda f: sample(f, self.fixed.grid, self.control_points))
        else:
            v = self.net(warped, self.fixed.volume, t, force)
            if self.fixed.grid != self.state_grid:
                v = sample_on_grid(v, self.fixed.grid, self.state_grid)
        return torch.einsum("ij,bj...->bi...", d, v)

    def moving_coordinates(self, theta: torch.Tensor) -> torch.Tensor:
        """``pre(T_theta(x))`` for the fixed level's voxel centres x, in the moving level's
        normalised coordinates: ``[B, nz, ny, nx, 3]``. A rigid theta, and a B-spline or a
        displacement field on a grid parallel to the level, go straight from voxel indices (the
        displacements are turned into normalised units: the map is linear in them); anything else
        through world points."""
        kind, lead, dtype = self.model.config.kind, self.lead, theta.dtype
        if not self.direct:
            points = self.model.transform(theta, self.state_grid, self.center).map_grid(self.fixed.grid, dtype=dtype)
            flat = points.reshape(points.shape[0], -1, 3)
            m = lead.to(dtype)
            return (flat @ m[:, :3, :3].transpose(-1, -2) + m[:, None, :3, 3]).reshape(points.shape)
        if kind == "rigid":
            return voxel_images(self.fixed.grid, lead @ Rigid(theta.double(), self.center.double()).homogeneous(), dtype)
        batch = max(lead.shape[0], theta.shape[0])
        linear, theta = lead[:, :3, :3].to(dtype).expand(batch, -1, -1), theta.expand(batch, *theta.shape[1:])
        if kind == "bspline":
            coefficients = torch.einsum("bij,bj...->bi...", linear, theta)
            shift = BSpline(self.state_grid, coefficients).displacement(self.fixed.grid)  # separable, [B, 3, nz, ny, nx]
        else:  # the displacement field at this level's voxel centres (zero outside its grid), then normalised
            field = theta if self.fixed.grid == self.state_grid else sample_on_grid(theta, self.state_grid, self.fixed.grid)
            shift = torch.einsum("bij,bj...->bi...", linear, field)
        return voxel_images(self.fixed.grid, lead, dtype) + shift.movedim(1, -1)


def voxel_images(grid: Grid, matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The images ``[B, nz, ny, nx, 3]`` (``dtype``) of ``grid``'s voxel centres under the 4x4 maps
    ``matrix [B, 4, 4]`` of world points: built from three axis vectors by broadcasting, as
    :meth:`Grid.world_points`, so one full-size pass instead of a matrix product per point."""
    m = (matrix @ torch.as_tensor(grid.matrix("index", "world"), dtype=matrix.dtype, device=matrix.device)).to(dtype)
    k, j, i = (torch.arange(n, dtype=dtype, device=matrix.device) for n in grid.shape)
    col = lambda c: m[:, None, None, None, :3, c]  # noqa: E731  [B, 1, 1, 1, 3]
    return col(3) + i[:, None] * col(0) + j[:, None, None] * col(1) + k[:, None, None, None] * col(2)


class MSODENet(nn.Module):
    """L networks and their solvers; ``forward`` integrates theta from ``theta0`` over [0, T]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.nets = nn.ModuleList([NETWORKS[config.kind](config.width) for _ in range(config.levels)])
        self.solvers = parse_schedule(config.schedule, config.levels)

    # ---------------------------------------------------------------- parameterisation
    def state_grid(self, fine: Grid) -> Grid | None:
        """Where theta lives: the control grid (bspline), the finest level (dense), none (rigid)."""
        if self.config.kind == "bspline":
            return BSpline.control_grid_for(fine, self.config.control_spacing)
        return fine if self.config.kind == "dense" else None

    def identity(self, fine: Grid, batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
        grid = self.state_grid(fine)
        shape = (batch, 6) if grid is None else (batch, 3, *grid.shape)
        return torch.zeros(shape, dtype=dtype, device=device)

    def transform(self, theta: torch.Tensor, state_grid: Grid | None, center=None, pre: Transform | None = None) -> Transform:
        kind = self.config.kind
        core = Rigid(theta, center) if kind == "rigid" else BSpline(state_grid, theta) if kind == "bspline" else DisplacementField(state_grid, theta)
        return core if pre is None else Compose([pre, core])

    # ---------------------------------------------------------------- integration
    def forward(self, fixed: list[Level], moving: list[Level], theta0: torch.Tensor | None = None,
                center: torch.Tensor | None = None, pre: Transform | None = None, adjoint: bool = False):
        """Integrate the ODE level by level. Returns (theta_T, number of function evaluations per level)."""
        from torchdiffeq import odeint, odeint_adjoint

        if len(fixed) != self.config.levels or len(moving) != self.config.levels:
            raise ValueError(f"the model needs {self.config.levels} pyramid levels")
        fine = fixed[-1].grid
        state_grid = self.state_grid(fine)
        dtype, device = fixed[-1].volume.dtype, fixed[-1].volume.device
        batch = max(fixed[-1].volume.shape[0], moving[-1].volume.shape[0])
        theta = self.identity(fine, batch, dtype, device) if theta0 is None else theta0
        if center is None:
            center = torch.as_tensor(fine.center, dtype=dtype, device=device).expand(batch, 3)
        segment = self.config.horizon / self.config.levels
        nfe = []
        for level, solver in enumerate(self.solvers):
            dyn = Dynamics(self, level, fixed[level], moving[level], state_grid, center, pre)
            times = torch.tensor([level * segment, (level + 1) * segment], dtype=dtype, device=device)
            if adjoint:
                theta = odeint_adjoint(dyn, theta, times, adjoint_params=tuple(dyn.net.parameters()), **solver.kwargs())[-1]
            else:
                theta = odeint(dyn, theta, times, **solver.kwargs())[-1]
            nfe.append(dyn.nfe)
        return theta, nfe
