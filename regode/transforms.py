"""Spatial transforms in world (LPS mm) coordinates.

Every transform is an ``nn.Module`` whose ``forward`` maps world points of the fixed
(reference) space to world points of the moving space, the direction ITK and ANTs use
to resample ("pull-back"). Points are tensors ``[B, *S, 3]`` with (x, y, z) last;
parameters are tensors with a leading batch dimension ``B`` and may be ``nn.Parameter``
(optimised per pair) or network outputs (predicted), so every transform is differentiable
with respect to its parameters and to the points.

Field-based transforms hold their values on a :class:`~regode.grid.Grid`: tensors
``[B, 3, nz, ny, nx]`` whose 3 channels are the world (LPS) x, y, z components in mm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .grid import Grid
from .rotations import rotation_matrix
from .sampling import sample, sample_on_grid


def _store(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Keep ``value`` as a parameter if it is one (optimised), else as a buffer (moves with .to())."""
    if isinstance(value, nn.Parameter):
        setattr(module, name, value)
    else:
        module.register_buffer(name, value)


class Transform(nn.Module):
    """Base class: ``forward(points [B, *S, 3]) -> points [B, *S, 3]``, fixed world -> moving world."""

    is_linear = False

    def inverse(self) -> Transform:
        raise NotImplementedError

    def displacement(self, grid: Grid) -> torch.Tensor:
        """Displacement (mm) at every voxel of ``grid``: ``[B, 3, nz, ny, nx]``."""
        moved = self.map_grid(grid)
        return (moved - grid.world_points(dtype=moved.dtype, device=moved.device)[None]).movedim(-1, 1)

    def map_grid(self, grid: Grid, slab: slice = slice(None), dtype: torch.dtype | None = None) -> torch.Tensor:
        """The images of the voxel centres of ``grid`` (slices ``slab``): ``[B, nz, ny, nx, 3]``.
        Field transforms on ``grid`` itself skip interpolation."""
        ref = self._reference_tensor()
        return self(grid.world_points(dtype=dtype or ref.dtype, device=ref.device, slab=slab)[None])

    def map_lattice(self, lattice) -> torch.Tensor:
        """The images of a :class:`~regode.lattice.Lattice`'s points ``[B, d, h, w, 3]`` (what a
        per-pair fit evaluates at every step)."""
        return self(lattice.points)

    def displacement_at(self, lattice) -> torch.Tensor:
        """The displacement ``[B, d, h, w, 3]`` (mm) at a lattice's points (its grid's, when it
        has one: field transforms then interpolate separably)."""
        if lattice.grid is not None:
            return self.displacement(lattice.grid).movedim(1, -1)
        return self(lattice.points) - lattice.points

    def _reference_tensor(self) -> torch.Tensor:
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.zeros(())


# ------------------------------------------------------------------------------------ linear
class Linear(Transform):
    """``y = A (x - c) + t + c`` (ITK's MatrixOffsetTransformBase) with matrix ``A [B, 3, 3]``,
    translation ``t [B, 3]`` (mm) and centre ``c [B, 3]`` (mm); subclasses say how A and t are
    parametrised."""

    is_linear = True
    matrix: torch.Tensor
    translation: torch.Tensor

    def _set_center(self, center, like: torch.Tensor) -> None:
        if center is None:
            center = torch.zeros(like.shape[0], 3, dtype=like.dtype, device=like.device)
        _store(self, "center", torch.as_tensor(center, dtype=like.dtype).reshape(-1, 3))

    @property
    def offset(self) -> torch.Tensor:
        """``o`` in ``y = A x + o`` (centre folded in), ``[B, 3]``."""
        return self._offset(self.matrix)

    def _offset(self, a: torch.Tensor) -> torch.Tensor:
        """:attr:`offset` for the matrix ``a`` already computed (a rigid map's comes from its
        rotation vector at every access: a polish step would build it twice)."""
        return self.translation + self.center - (a @ self.center[..., None])[..., 0]

    def homogeneous(self) -> torch.Tensor:
        """4x4 matrices ``[B, 4, 4]`` acting on column vectors (x, y, z, 1)."""
        a = self.matrix
        o = self._offset(a)
        top = torch.cat([a, o[..., None]], dim=-1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=a.dtype, device=a.device).expand(a.shape[0], 1, 4)
        return torch.cat([top, bottom], dim=-2)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        matrix = self.matrix
        a, o = matrix.to(points.dtype), self._offset(matrix).to(points.dtype)
        flat = points.reshape(points.shape[0], -1, 3)
        moved = flat @ a.transpose(-1, -2) + o[:, None, :]
        return moved.reshape(max(a.shape[0], points.shape[0]), *points.shape[1:])

    def inverse(self) -> Affine:
        inv = torch.linalg.inv(self.matrix)
        return Affine(inv, -(inv @ self.translation[..., None])[..., 0], self.center)


class Affine(Linear):
    """General affine (12 dof): ``matrix [B, 3, 3]``, ``translation [B, 3]`` mm, ``center [B, 3]`` mm."""

    def __init__(
        self, matrix: torch.Tensor, translation: torch.Tensor | None = None, center: torch.Tensor | None = None
    ):
        super().__init__()
        if not isinstance(matrix, nn.Parameter):  # a Parameter (fitted per pair) is kept as it is
            matrix = torch.as_tensor(matrix)
            matrix = matrix[None] if matrix.dim() == 2 else matrix
        _store(self, "matrix", matrix)
        if translation is None:
            translation = torch.zeros(matrix.shape[0], 3, dtype=matrix.dtype, device=matrix.device)
        if not isinstance(translation, nn.Parameter):
            translation = torch.as_tensor(translation, dtype=matrix.dtype).reshape(-1, 3)
        _store(self, "translation", translation)
        self._set_center(center, matrix)


def integrate_velocity(velocity, points: torch.Tensor, steps: int, solver: str, reverse: bool = False) -> torch.Tensor:
    """Positions at t = 1 of ``points [..., 3]`` (world mm) moved by the stationary velocity field
    ``velocity`` (a function of points, mm per unit time; t = -1 when ``reverse``: the inverse
    mapping), integrated with ``steps`` fixed steps of torchdiffeq's ``solver``."""
    from torchdiffeq import odeint

    sign = -1.0 if reverse else 1.0
    times = torch.tensor([0.0, 1.0], dtype=points.dtype, device=points.device)
    path = odeint(lambda t, y: sign * velocity(y), points, times, method=solver, options={"step_size": 1.0 / steps})
    return path[-1]


class Rigid(Linear):
    """Rotation about ``center`` then translation: ``params [B, 6]`` = (rotation vector in radians,
    translation in mm)."""

    def __init__(self, params: torch.Tensor, center: torch.Tensor | None = None):
        super().__init__()
        params = torch.as_tensor(params)
        if params.dim() == 1:
            params = params[None]
        _store(self, "params", params)
        self._set_center(center, params)

    @property
    def matrix(self) -> torch.Tensor:  # type: ignore[override]
        return rotation_matrix(self.params[..., :3])

    @property
    def translation(self) -> torch.Tensor:  # type: ignore[override]
        return self.params[..., 3:]


# ------------------------------------------------------------------------------ dense fields
class DisplacementField(Transform):
    """``y = x + u(x)``, ``u [B, 3, nz, ny, nx]`` in world mm on ``grid``, linearly interpolated,
    zero outside the grid (as ITK's DisplacementFieldTransform)."""

    def __init__(self, grid: Grid, field: torch.Tensor):
        super().__init__()
        field = torch.as_tensor(field)
        if field.dim() == 4:
            field = field[None]
        if tuple(field.shape[1:]) != (3, *grid.shape):
            raise ValueError(f"field shape {tuple(field.shape)} does not match grid shape {grid.shape}")
        self.grid = grid
        _store(self, "field", field)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        u = sample(self.field, self.grid, points.to(self.field.dtype)).movedim(1, -1)
        return points + u.to(points.dtype)

    def displacement(self, grid: Grid) -> torch.Tensor:
        if grid.same_as(self.grid, tol=1e-6):
            return self.field
        return sample_on_grid(self.field, self.grid, grid)

    def map_grid(self, grid: Grid, slab: slice = slice(None), dtype: torch.dtype | None = None) -> torch.Tensor:
        if not grid.same_as(self.grid, tol=1e-6):
            return super().map_grid(grid, slab, dtype)
        dtype = dtype or self.field.dtype
        points = grid.world_points(dtype=dtype, device=self.field.device, slab=slab)[None]
        return points + self.field[:, :, slab].movedim(1, -1).to(dtype)

    def inverse(self, iterations: int = 30, tolerance: float = 1e-3) -> DisplacementField:
        """Numerical inverse on the same grid by fixed-point iteration ``v(y) = -u(y + v(y))``, point
        by point: a point stops once its step is under ``tolerance`` mm, every point after
        ``iterations`` steps; each step samples only the points still moving. Beyond the grid ``u``
        continues its border values (with zero padding, points near the border never converge)."""
        batch = self.field.shape[0]
        points = self.grid.world_points(dtype=self.field.dtype, device=self.field.device)[None]
        at = points.expand(batch, *points.shape[1:]).reshape(batch, -1, 3)  # the points still moving
        v = -self.field.movedim(1, -1).reshape(batch, -1, 3)
        index, guess = torch.arange(v.shape[1], device=v.device), v.clone()  # where they are, their guess
        for _ in range(iterations):
            if index.numel() == 0:
                break
            step = -sample(self.field, self.grid, at + guess, padding=None).movedim(1, -1)
            moving = ((step - guess).abs().amax(-1) >= tolerance).any(0)
            v[:, index] = step
            index, at, guess = index[moving], at[:, moving], step[:, moving]
        return DisplacementField(self.grid, v.reshape(batch, *self.grid.shape, 3).movedim(-1, 1))


# --------------------------------------------------------------------------------- B-spline
def bspline_kernel(d: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline basis beta3(d)."""
    a = d.abs()
    inner = 2 / 3 - a**2 + a**3 / 2
    outer = (2 - a).clamp(min=0) ** 3 / 6
    return torch.where(a < 1, inner, outer)


class BSpline(Transform):
    """Cubic B-spline free-form deformation: ``y = x + sum_k beta3(u(x) - k) c_k`` where ``u(x)`` is
    the continuous index of ``x`` in ``control_grid`` and ``c [B, 3, cz, cy, cx]`` are the
    control-point displacements in world mm (control points outside the grid count as zero)."""

    def __init__(self, control_grid: Grid, coefficients: torch.Tensor):
        super().__init__()
        coefficients = torch.as_tensor(coefficients)
        if coefficients.dim() == 4:
            coefficients = coefficients[None]
        if tuple(coefficients.shape[1:]) != (3, *control_grid.shape):
            raise ValueError(f"coefficients {tuple(coefficients.shape)} do not match control grid {control_grid.shape}")
        self.control_grid = control_grid
        _store(self, "coefficients", coefficients)

    @staticmethod
    def control_grid_for(grid: Grid, spacing: float) -> Grid:
        """A control grid with ``spacing`` mm, the direction of ``grid`` and one control point
        beyond its field of view on every side (so every voxel has full B-spline support)."""
        extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing)
        inner = np.ceil(extent / spacing).astype(int) + 1
        size = inner + 2
        origin = grid.center - grid.direction_matrix @ (spacing * (size - 1) / 2 * np.ones(3))
        return Grid(tuple(size), (spacing,) * 3, tuple(origin), grid.direction)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        c = self.coefficients
        m = torch.as_tensor(self.control_grid.matrix("world", "index"), dtype=c.dtype, device=c.device)
        flat = points.reshape(points.shape[0], -1, 3).to(c.dtype)
        u = flat @ m[:3, :3].T + m[:3, 3]
        base = torch.floor(u)
        t = u - base
        base = base.long() - 1
        weights = [bspline_kernel(t - (o - 1)) for o in range(4)]  # weight of base + o, each [B, N, 3]
        size = torch.tensor(self.control_grid.size, device=c.device)
        coef = c.reshape(c.shape[0], 3, -1)
        batch = max(c.shape[0], flat.shape[0])
        disp = torch.zeros(batch, 3, flat.shape[1], dtype=c.dtype, device=c.device)
        for oz in range(4):
            for oy in range(4):
                for ox in range(4):
                    idx = base + torch.tensor([ox, oy, oz], device=c.device)
                    valid = ((idx >= 0) & (idx < size)).all(-1)
                    lin = (idx[..., 2] * size[1] + idx[..., 1]) * size[0] + idx[..., 0]
                    lin = torch.where(valid, lin, torch.zeros_like(lin))
                    w = weights[ox][..., 0] * weights[oy][..., 1] * weights[oz][..., 2] * valid
                    gathered = torch.gather(coef.expand(batch, -1, -1), 2, lin[:, None, :].expand(batch, 3, -1))
                    disp = disp + w[:, None, :] * gathered
        return points + disp.movedim(1, -1).reshape(batch, *points.shape[1:]).to(points.dtype)

    def displacement(self, grid: Grid) -> torch.Tensor:
        """Dense displacement on ``grid``; separable (three small matrix products) when ``grid``'s
        axes are parallel to the control grid's, pointwise otherwise."""
        disp = self._separable(grid)
        return super().displacement(grid) if disp is None else disp

    def map_grid(self, grid: Grid, slab: slice = slice(None), dtype: torch.dtype | None = None) -> torch.Tensor:
        disp = self._separable(grid)
        if disp is None:
            return super().map_grid(grid, slab, dtype)
        dtype = dtype or disp.dtype
        points = grid.world_points(dtype=dtype, device=disp.device, slab=slab)[None]
        return points + disp[:, :, slab].movedim(1, -1).to(dtype)

    def map_lattice(self, lattice) -> torch.Tensor:
        disp = self._separable(lattice.grid) if lattice.grid is not None else None
        if disp is None:
            return super().map_lattice(lattice)
        return lattice.points + disp.movedim(1, -1).to(lattice.points.dtype)

    @staticmethod
    def _axis_weights(control_grid: Grid, grid: Grid, dtype, device) -> list[torch.Tensor] | None:
        """Each axis's basis weights ``[n_axis, control_axis]`` (x, y, z) of the control points at
        ``grid``'s voxels, or None where the grids' axes are not parallel."""
        m = control_grid.matrix("world", "index") @ grid.matrix("index", "world")
        if not np.allclose(m[:3, :3], np.diag(np.diag(m[:3, :3])), atol=1e-6):
            return None
        mats = []
        for axis in range(3):
            u = m[axis, axis] * np.arange(grid.size[axis]) + m[axis, 3]
            d = torch.as_tensor(u[:, None] - np.arange(control_grid.size[axis])[None, :], dtype=dtype, device=device)
            mats.append(bspline_kernel(d))
        return mats

    def _separable(self, grid: Grid) -> torch.Tensor | None:
        c = self.coefficients
        mats = self._axis_weights(self.control_grid, grid, c.dtype, c.device)
        if mats is None:
            return None
        wx, wy, wz = mats
        out = torch.einsum("xi,bckji->bckjx", wx, c)
        out = torch.einsum("yj,bckjx->bckyx", wy, out)
        return torch.einsum("zk,bckyx->bczyx", wz, out)

    @classmethod
    def adjoint(cls, control_grid: Grid, grid: Grid, field: torch.Tensor) -> torch.Tensor:
        """The transpose of ``coefficients -> displacement(grid)``: ``field [B, 3, nz, ny, nx]`` on
        ``grid`` -> ``[B, 3, *control]``, each control point's sum of the field weighted by its basis
        function (the gradient with respect to the coefficients of a loss whose gradient per voxel
        is ``field``). Separable where the grids' axes are parallel, by automatic differentiation
        of the pointwise path otherwise; differentiable in ``field`` either way."""
        mats = cls._axis_weights(control_grid, grid, field.dtype, field.device)
        if mats is None:
            with torch.enable_grad():
                zero = torch.zeros(
                    field.shape[0], 3, *control_grid.shape, dtype=field.dtype, device=field.device, requires_grad=True
                )
                (total,) = torch.autograd.grad(
                    cls(control_grid, zero).displacement(grid),
                    zero,
                    grad_outputs=field,
                    create_graph=field.requires_grad,
                )
            return total
        wx, wy, wz = mats
        out = torch.einsum("zk,bczyx->bckyx", wz, field)
        out = torch.einsum("yj,bckyx->bckjx", wy, out)
        return torch.einsum("xi,bckjx->bckji", wx, out)

    def inverse(self, grid: Grid | None = None) -> DisplacementField:
        """Numerical inverse as a displacement field on ``grid`` (default: the control grid's
        field of view at a quarter of the control spacing)."""
        grid = grid or self.control_grid.with_spacing(np.asarray(self.control_grid.spacing) / 4)
        return DisplacementField(grid, self.displacement(grid)).inverse()


# ------------------------------------------------------------------------------ composition
class Compose(Transform):
    """``Compose([T0, T1, ..., Tn])(x) = T0(T1(...Tn(x)))``: the last transform is applied first to
    points, as in ITK's CompositeTransform and antsApplyTransforms' ``-t`` order."""

    def __init__(self, transforms: list[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        return all(t.is_linear for t in self.transforms)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        for t in reversed(self.transforms):
            points = t(points)
        return points

    def map_grid(self, grid: Grid, slab: slice = slice(None), dtype: torch.dtype | None = None) -> torch.Tensor:
        if not len(self.transforms):
            return super().map_grid(grid, slab, dtype)
        points = self.transforms[-1].map_grid(grid, slab, dtype)
        for t in reversed(self.transforms[:-1]):
            points = t(points)
        return points

    def inverse(self) -> Compose:
        return Compose([t.inverse() for t in reversed(self.transforms)])

    def as_affine(self) -> Affine:
        """The single affine equal to a composition of linear transforms."""
        if not self.is_linear:
            raise ValueError("only a composition of linear transforms is an affine")
        h = None
        for t in self.transforms:
            h = t.homogeneous() if h is None else h @ t.homogeneous()
        return Affine(h[:, :3, :3], h[:, :3, 3])


__all__ = ["Transform", "Linear", "Affine", "Rigid", "DisplacementField", "BSpline", "Compose", "integrate_velocity"]
