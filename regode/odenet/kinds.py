"""MS-ODENet's model kinds: each transformation family as one class, registered in :data:`KINDS`.

A kind owns everything that differs between families: where theta lives (its state grid) and its
identity, the transform theta stands for, the network and how its output becomes d theta/dt, the
fast path from theta to the moving level's coordinates, the training losses that compare theta
with the truth, how a registration result is assembled and the polish after the network.

Frames: theta is world LPS (mm, and radians for rotations); the networks see and return vectors in
the level grid's axes, turned into world vectors here with the level's direction matrix.

Adding a kind: subclass :class:`Kind` and give it an entry in regode.odenet.registry.KINDS
(docs/architecture.md has a worked example).
"""

from __future__ import annotations

import torch
from torch import nn

from ..grid import Grid
from ..losses import gradient_energy
from ..rotations import right_jacobian_inverse, rotation_matrix
from ..sampling import sample, sample_on_grid, voxel_images
from ..transforms import Affine, BSpline, Compose, DisplacementField, Rigid, Transform
from .motion import affine_pair, deformable_pair, rigid_pair
from .polish import polish_affine_chosen, polish_bspline, polish_dense, polish_rigid
from .registry import KINDS as SPECS
from .registry import KindSpec, Schedule

ARC_RADIUS = 50.0
"""mm: in L_self a rotation-vector error of 1 rad counts as 50 mm."""


class Kind:
    """The base of the kinds: a field-valued theta (``[B, 3, *state grid]``, mm). The facts of a
    kind (its name, whether it is linear, its network, its polish schedule) are its registry entry's
    (regode.odenet.registry.KindSpec); this class holds its behaviour."""

    def __init__(self, spec: KindSpec):
        self.spec = spec
        self.name = spec.name
        self.linear = spec.linear
        """theta is a linear map (composed into the result's affine part)."""
        self.network: type[nn.Module] = spec.load("network")

    def state_grid(self, config, fine: Grid) -> Grid | None:
        """Where theta lives, given the finest working grid."""
        raise NotImplementedError

    def identity(self, config, fine: Grid, batch: int, dtype, device) -> torch.Tensor:
        grid = self.state_grid(config, fine)
        return torch.zeros((batch, 3, *grid.shape), dtype=dtype, device=device)

    def transform(self, theta: torch.Tensor, state_grid: Grid | None, center=None) -> Transform:
        raise NotImplementedError

    # ------------------------------------------------------------------ the dynamics on one level
    def prepare(self, dyn) -> None:
        """Per-level constants of the dynamics ``dyn`` (regode.odenet.model.Dynamics)."""

    def direct(self, dyn) -> bool:
        """Whether :meth:`coordinates` applies on this level (else world points are used)."""
        return dyn.state_grid.parallel_to(dyn.fixed.grid)

    def velocity(self, dyn, t, theta: torch.Tensor, warped: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
        """d theta / dt from the level network's output (grid axes -> world)."""
        raise NotImplementedError

    def pullback(self, dyn, theta: torch.Tensor) -> torch.Tensor:
        """``[B or 1, 3, 3]``: the linear map from a world displacement where the velocity acts (of
        theta's displaced points ``x + d(x)``, before ``pre``) to the moving level's normalised
        coordinates. The similarity force is taken with respect to such a displacement, so that it
        points where the velocity should."""
        return dyn.lead[:, :3, :3]

    def shift(self, dyn, theta: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
        """theta's displacement at the level's voxel centres, ``[B, 3, nz, ny, nx]``, after the
        ``linear`` part ``[B, 3, 3]`` of the start (world -> the moving level's normalised units)."""
        raise NotImplementedError

    def coordinates(self, dyn, theta: torch.Tensor) -> torch.Tensor:
        """``pre(T_theta(x))`` for the level's voxel centres, in the moving level's normalised
        coordinates ``[B, nz, ny, nx, 3]``, straight from voxel indices: the displacement is turned
        into normalised units first (the map is linear in it)."""
        lead, dtype = dyn.lead, theta.dtype
        batch = max(lead.shape[0], theta.shape[0])
        linear, theta = lead[:, :3, :3].to(dtype).expand(batch, -1, -1), theta.expand(batch, *theta.shape[1:])
        return voxel_images(dyn.fixed.grid, lead, dtype) + self.shift(dyn, theta, linear).movedim(1, -1)

    # ------------------------------------------------------------------ training
    training_pair = staticmethod(deformable_pair)
    """a training pair of two contrasts with a motion this kind learns to undo (regode.odenet.motion)."""

    def self_loss(self, theta: torch.Tensor, displacement: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """L_self (cm^2): the predicted displacement against the known one."""
        return (displacement - truth).square().mean() / 100

    def regulariser(self, displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
        """L_reg: ``||grad phi||^2`` of the displacement."""
        return gradient_energy(displacement, grid.spacing)

    def truth_displacement(self, truth: torch.Tensor, center: torch.Tensor, grid: Grid) -> torch.Tensor:
        """A pair's known motion as a displacement ``[B, 3, ...]`` on its grid."""
        return truth

    # ------------------------------------------------------------------ registration
    def result(self, model, theta: torch.Tensor, linear: Affine, center: torch.Tensor, fixed_grid: Grid):
        """The (linear, deformable) parts after this stage, from its theta (CPU, float64)."""
        return linear, self.transform(theta, model.state_grid(fixed_grid))

    def polish(
        self,
        fixed: list,
        moving: list,
        linear: Affine,
        core,
        center: torch.Tensor,
        seed: int,
        schedule: Schedule,
        masks=(None, None),
    ):
        """The stage's result optimised for mutual information by the polish ``schedule`` (over the
        ``masks``' insides, masks given per pyramid level): (linear, core, record)."""
        raise NotImplementedError


class RigidKind(Kind):
    """``[B, 6]``: rotation vector (rad) and translation (mm) about a centre (a :class:`Rigid`)."""

    def state_grid(self, config, fine):
        return None

    def identity(self, config, fine, batch, dtype, device):
        return torch.zeros((batch, 6), dtype=dtype, device=device)

    def transform(self, theta, state_grid, center=None):
        return Rigid(theta, center)

    def prepare(self, dyn):
        c = torch.as_tensor(dyn.center, dtype=torch.float64).detach().cpu().reshape(-1, 3).numpy()
        dyn.center_index = torch.as_tensor(
            dyn.fixed.grid.world_to_index(c), dtype=dyn.fixed.volume.dtype, device=dyn.fixed.volume.device
        ).reshape(-1, 3)

    def direct(self, dyn):
        return True

    def velocity(self, dyn, t, theta, warped, force):
        # the network's rigid velocity acts in fixed space, before the current motion:
        # phi <- phi o (1 + [omega] dt, t dt), i.e. R <- R exp([omega] dt) and translation += R t dt
        d = dyn.direction
        v = dyn.net(warped, dyn.fixed.volume, t, force, dyn.center_index, float(dyn.fixed.grid.spacing[0]))
        omega, shift = torch.det(d) * v[:, :3] @ d.T, v[:, 3:] @ d.T
        rotvec = theta[:, :3]
        rdot = (right_jacobian_inverse(rotvec) @ omega[..., None])[..., 0]
        return torch.cat([rdot, (rotation_matrix(rotvec) @ shift[..., None])[..., 0]], dim=1)

    def coordinates(self, dyn, theta):
        return voxel_images(
            dyn.fixed.grid,
            dyn.lead @ self.transform(theta.double(), None, dyn.center.double()).homogeneous(),
            theta.dtype,
        )

    def pullback(self, dyn, theta):
        # the velocity acts on fixed points before the current motion: a displacement u there moves
        # the moving point by pre's and theta's linear parts times u
        matrix = self.transform(
            theta.detach().double(), None, dyn.center.double()
        ).matrix  # the force is a constant input
        return dyn.lead[:, :3, :3] @ matrix

    training_pair = staticmethod(rigid_pair)

    def self_loss(self, theta, displacement, truth):
        diff = theta - truth
        return torch.cat([diff[:, :3] * ARC_RADIUS, diff[:, 3:]], 1).square().mean() / 100

    def regulariser(self, displacement, grid):
        return torch.zeros(())

    def truth_displacement(self, truth, center, grid):
        return self.transform(truth, None, center).displacement(grid)

    def result(self, model, theta, linear, center, fixed_grid):
        return Compose([linear, self.transform(theta, None, center[None])]).as_affine(), None

    def polish(self, fixed, moving, linear, core, center, seed, schedule, masks=(None, None)):
        linear, record = polish_rigid(fixed, moving, linear, center, schedule, seed, masks)
        return linear, core, record


class AffineKind(RigidKind):
    """``[B, 12]``: ``A - I`` row by row and the translation (mm) of an affine map about a centre
    (an :class:`Affine`: ``y = A (x - c) + t + c``)."""

    def identity(self, config, fine, batch, dtype, device):
        return torch.zeros((batch, 12), dtype=dtype, device=device)

    def transform(self, theta, state_grid, center=None):
        eye = torch.eye(3, dtype=theta.dtype, device=theta.device)
        return Affine(eye + theta[:, :9].reshape(-1, 3, 3), theta[:, 9:], center)

    def velocity(self, dyn, t, theta, warped, force):
        # as the rigid kind's: the network's affine velocity v(r) = M r + tau acts in fixed space,
        # before the current map: A <- A (1 + M dt), translation += A tau dt
        d = dyn.direction
        v = dyn.net(warped, dyn.fixed.volume, t, force, dyn.center_index, float(dyn.fixed.grid.spacing[0]))
        m = d @ v[:, :9].reshape(-1, 3, 3) @ d.T  # grid axes -> world
        tau = v[:, 9:] @ d.T
        a = torch.eye(3, dtype=theta.dtype, device=theta.device) + theta[:, :9].reshape(-1, 3, 3)
        return torch.cat([(a @ m).flatten(1), (a @ tau[..., None])[..., 0]], dim=1)

    training_pair = staticmethod(affine_pair)

    def self_loss(self, theta, displacement, truth):
        diff = theta - truth  # a matrix error of 1 counts as ARC_RADIUS mm, as a rotation of 1 rad
        return torch.cat([diff[:, :9] * ARC_RADIUS, diff[:, 9:]], 1).square().mean() / 100

    def polish(self, fixed, moving, linear, core, center, seed, schedule, masks=(None, None)):
        linear, record = polish_affine_chosen(fixed, moving, linear, center, schedule, seed, masks)
        return linear, core, record


class BSplineKind(Kind):
    """``[B, 3, *control]``: control-point displacements in mm (a :class:`BSpline`)."""

    def state_grid(self, config, fine):
        return BSpline.control_grid_for(fine, config.control_spacing)

    def transform(self, theta, state_grid, center=None):
        return BSpline(state_grid, theta)

    def prepare(self, dyn):
        # control points in this level's grid, clamped into its buffer (outer control points take
        # the nearest border features)
        grid = dyn.fixed.grid
        cpts = dyn.state_grid.world_points(dtype=torch.float64)
        index = torch.as_tensor(grid.world_to_index(cpts.reshape(-1, 3).numpy()))
        index = torch.minimum(torch.clamp(index, min=0), torch.as_tensor(grid.size, dtype=torch.float64) - 1)
        inside = torch.as_tensor(grid.index_to_world(index.numpy()))
        dyn.control_points = inside.reshape(1, *cpts.shape[:-1], 3).to(
            dtype=dyn.fixed.volume.dtype, device=dyn.fixed.volume.device
        )
        # the force is read where mutual information samples the level (every step-th voxel in the
        # flattened z, y, x order of Dynamics.forward): the network's force term, the B-spline's
        # adjoint of the force (regode.transforms.BSpline.adjoint) divided by that of those voxels,
        # is a weighted mean of the force about each control point
        read = torch.zeros(dyn.fixed.volume[0, 0].numel(), dtype=dyn.fixed.volume.dtype, device=dyn.fixed.volume.device)
        read[:: dyn.similarity.step] = 1.0
        weight = BSpline.adjoint(dyn.state_grid, grid, read.reshape(1, 1, *grid.shape).expand(1, 3, *grid.shape))
        dyn.spread_weight = weight.clamp_min(1e-3 * float(weight.max()))

    def velocity(self, dyn, t, theta, warped, force):
        v = dyn.net(
            warped,
            dyn.fixed.volume,
            t,
            force,
            lambda f: sample(f, dyn.fixed.grid, dyn.control_points),
            lambda f: BSpline.adjoint(dyn.state_grid, dyn.fixed.grid, f) / dyn.spread_weight,
        )
        return torch.einsum("ij,bj...->bi...", dyn.direction, v)

    def shift(self, dyn, theta, linear):
        coefficients = torch.einsum("bij,bj...->bi...", linear, theta)
        return BSpline(dyn.state_grid, coefficients).displacement(dyn.fixed.grid)  # separable

    def polish(self, fixed, moving, linear, core, center, seed, schedule, masks=(None, None)):
        core, record = polish_bspline(fixed, moving, linear, core, schedule, seed, masks=masks)
        return linear, core, record


class DenseKind(Kind):
    """``[B, 3, nz, ny, nx]``: displacements in mm on the finest level (a :class:`DisplacementField`)."""

    def state_grid(self, config, fine):
        return fine

    def transform(self, theta, state_grid, center=None):
        return DisplacementField(state_grid, theta)

    def velocity(self, dyn, t, theta, warped, force):
        v = dyn.net(warped, dyn.fixed.volume, t, force)
        if dyn.fixed.grid != dyn.state_grid:
            v = sample_on_grid(v, dyn.fixed.grid, dyn.state_grid)
        return torch.einsum("ij,bj...->bi...", dyn.direction, v)

    def shift(self, dyn, theta, linear):
        # the displacement field at this level's voxel centres (zero outside its grid)
        field = theta if dyn.fixed.grid == dyn.state_grid else sample_on_grid(theta, dyn.state_grid, dyn.fixed.grid)
        return torch.einsum("bij,bj...->bi...", linear, field)

    def polish(self, fixed, moving, linear, core, center, seed, schedule, masks=(None, None)):
        core, record = polish_dense(fixed, moving, linear, core, schedule, seed, masks)
        return linear, core, record


KINDS: dict[str, Kind] = {name: spec.load()(spec) for name, spec in SPECS.items()}
"""each registered kind's behaviour, by name (regode.odenet.registry.KINDS)."""
