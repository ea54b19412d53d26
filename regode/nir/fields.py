"""Neural fields: coordinate networks from fixed-space world points (LPS mm) to millimetres.

A field is an encoding of the point followed by a small MLP whose last layer starts at zero, so
every fit starts from the identity. Encodings:

- ``grid``: multi-resolution dense grids of learned features, interpolated trilinearly (as in
  Instant-NGP, without hashing: brain volumes are small enough for dense grids). Fast on a CPU:
  a point costs a few interpolations and a tiny MLP.
- ``fourier``: random Fourier features of the normalised coordinates (Tancik et al.).
- ``none``: the normalised coordinates themselves (with ``activation="sine"``: SIREN).

``activation`` is ``relu`` or ``sine`` (SIREN's initialisation, first-layer frequency ``omega0``).
:class:`FieldTransform` makes a field a :class:`~regode.transforms.Transform`: its output is a
displacement, or a stationary velocity integrated over [0, 1] (regode.transforms.integrate_velocity,
fixed steps), which gives a diffeomorphic mapping.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..grid import Grid
from ..sampling import sample, sample_on_grid
from ..transforms import Transform, integrate_velocity
from .config import FieldConfig


def feature_grid(domain: Grid, spacing: float) -> Grid:
    """An isotropic grid in ``domain``'s orientation whose nodes cover ``domain`` with one node to
    spare on every side (so that every point of the domain is interpolated, never padded)."""
    extent = (np.asarray(domain.size) - 1) * np.asarray(domain.spacing)
    size = np.ceil(extent / spacing).astype(int) + 3
    origin = domain.center - domain.direction_matrix @ (spacing * (size - 1) / 2)
    return Grid(tuple(size), (spacing,) * 3, tuple(origin), domain.direction)


class GridEncoding(nn.Module):
    def __init__(self, domain: Grid, levels: int, coarsest: float, features: int):
        super().__init__()
        self.grids = [feature_grid(domain, coarsest / 2**level) for level in range(levels)]
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(1, features, *g.shape).uniform_(-1e-4, 1e-4)) for g in self.grids
        )
        self.out_features = levels * features

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        flat = points.reshape(1, -1, 3)
        feats = [
            sample(table, grid, flat, padding=None)[0] for table, grid in zip(self.tables, self.grids, strict=False)
        ]
        return torch.cat(feats, 0).T.reshape(*points.shape[:-1], self.out_features)

    def on_grid(self, grid: Grid) -> torch.Tensor:
        """``forward`` at the voxels of ``grid``, ``[nz, ny, nx, features]``, computed separably
        (trilinear interpolation is a product of 1D ones when the grid shares the tables' axes):
        far cheaper than sampling every point."""
        return torch.cat(
            [
                sample_on_grid(table, fgrid, grid, padding=None)[0]
                for table, fgrid in zip(self.tables, self.grids, strict=False)
            ]
        ).movedim(0, -1)


class FourierEncoding(nn.Module):
    def __init__(self, features: int, sigma: float):
        super().__init__()
        self.register_buffer("B", torch.randn(3, features) * sigma)
        self.out_features = 2 * features + 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = math.pi * x @ self.B
        return torch.cat([x, proj.sin(), proj.cos()], -1)


class Sine(nn.Module):
    def __init__(self, omega: float):
        super().__init__()
        self.omega = omega

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * x)


class NeuralField(nn.Module):
    """``f(x)``: world points ``[..., 3]`` (mm) -> vectors ``[..., 3]`` (mm, world axes)."""

    def __init__(self, domain: Grid, config: FieldConfig):
        super().__init__()
        self.config = config
        # world -> [-1, 1] over the domain, for the coordinate encodings
        m = torch.as_tensor(domain.matrix("world", "normalised"), dtype=torch.float32)
        self.register_buffer("to_unit", m)
        if config.encoding == "grid":
            self.encoding = GridEncoding(domain, config.grid_levels, config.grid_coarsest, config.grid_features)
        elif config.encoding == "fourier":
            self.encoding = FourierEncoding(config.fourier_features, config.fourier_sigma)
        else:
            self.encoding = None
        width = self.encoding.out_features if self.encoding is not None else 3
        layers: list[nn.Module] = []
        for i in range(config.layers):
            linear = nn.Linear(width, config.hidden)
            if config.activation == "sine":
                bound = 1 / width if i == 0 else math.sqrt(6 / width) / config.omega0
                nn.init.uniform_(linear.weight, -bound, bound)
                layers += [linear, Sine(config.omega0)]
            else:
                layers += [linear, nn.ReLU()]
            width = config.hidden
        last = nn.Linear(width, 3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    def on_grid(self, grid: Grid, slab: slice = slice(None)) -> torch.Tensor:
        """``forward`` at the voxels of ``grid`` (slices ``slab``): ``[nz, ny, nx, 3]``; separable
        (fast) for grid encodings on a grid with the domain's axes (see regode.sampling.sample_on_grid)."""
        if isinstance(self.encoding, GridEncoding):
            return self.mlp(self.encoding.on_grid(grid.rows(slab)))
        device = self.mlp[-1].weight.device
        return self(grid.world_points(torch.float32, device, slab))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoding, GridEncoding):
            features = self.encoding(points)
        else:
            unit = points @ self.to_unit[:3, :3].T + self.to_unit[:3, 3]
            features = self.encoding(unit) if self.encoding is not None else unit
        return self.mlp(features)


CHUNK = 1 << 18
"""points per evaluation of a whole grid without gradients (bounded memory at 1 mm)."""


class FieldTransform(Transform):
    """A neural field as a transform: ``x -> x + f(x)``, or with ``diffeomorphic`` the flow of the
    stationary velocity ``f`` over [0, 1] (``reverse``: over [0, -1], its inverse)."""

    def __init__(
        self,
        network: NeuralField,
        diffeomorphic: bool = False,
        steps: int = 6,
        solver: str = "euler",
        reverse: bool = False,
    ):
        super().__init__()
        self.network, self.diffeomorphic, self.steps, self.solver, self.reverse = (
            network,
            diffeomorphic,
            steps,
            solver,
            reverse,
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or points[..., 0].numel() <= CHUNK:
            return self._map(points)
        flat = points.reshape(-1, 3)
        return torch.cat([self._map(part) for part in flat.split(CHUNK)]).reshape(points.shape)

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        if self.diffeomorphic:
            return integrate_velocity(self.network, points, self.steps, self.solver, self.reverse)
        return points + self.network(points)

    def map_grid(self, grid: Grid, slab: slice = slice(None), dtype: torch.dtype | None = None) -> torch.Tensor:
        """A displacement field's values at the voxels of ``grid`` are computed separably (see
        :meth:`NeuralField.on_grid`), a few slices at a time."""
        if self.diffeomorphic:
            return super().map_grid(grid, slab, dtype)
        ref = self._reference_tensor()
        nz, ny, nx = grid.shape
        rows = range(nz)[slab]
        step = max(1, CHUNK // (ny * nx))
        parts = []
        for k in range(rows.start, rows.stop, step):
            part = slice(k, min(k + step, rows.stop))
            points = grid.world_points(dtype or ref.dtype, ref.device, part)
            parts.append(points + self.network.on_grid(grid, part).to(points.dtype))
        return torch.cat(parts)[None]

    def inverse(self) -> FieldTransform:
        if not self.diffeomorphic:
            raise ValueError("only velocity fields have a closed-form inverse")
        return FieldTransform(self.network, True, self.steps, self.solver, not self.reverse)
