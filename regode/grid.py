"""The sampling grid of a 3D image: size, spacing, origin and direction.

A :class:`Grid` names three coordinate frames and gives the 4x4 matrix between
any two of them (:meth:`Grid.matrix`):

* ``"index"``      continuous voxel index (i, j, k), ITK order (i fastest);
* ``"normalised"`` index scaled per axis to [-1, 1] with corners aligned
  (-1 is the centre of voxel 0, +1 the centre of the last voxel), as
  ``grid_sample(..., align_corners=True)`` reads it;
* ``"world"``      physical LPS millimetres (ITK/SimpleITK/ANTs convention).

Tensors of a grid are laid out ``[..., nz, ny, nx]`` (torch's D, H, W), the
reverse of the index order; coordinates are always ordered (x, y, z) / (i, j, k).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk
    import torch

FRAMES = ("index", "normalised", "world")


@dataclass(frozen=True)
class Grid:
    """Immutable 3D sampling grid.

    size:      voxels per axis (nx, ny, nz), ITK order.
    spacing:   voxel size per axis in mm.
    origin:    world (LPS mm) position of the centre of voxel (0, 0, 0).
    direction: 3x3 matrix whose columns are the world directions of the i, j, k axes,
               stored row-major as 9 floats (SimpleITK's ``GetDirection`` order).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.ravel(self.direction)))
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Grid needs 3 sizes, 3 spacings, 3 origin values and a 3x3 direction")
        if min(self.size) < 1 or min(self.spacing) <= 0:
            raise ValueError(f"invalid grid size {self.size} or spacing {self.spacing}")

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Grid:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this grid's spacing, origin and direction on a SimpleITK image of the same size."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} differs from grid size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def with_spacing(self, spacing: float | tuple[float, float, float]) -> Grid:
        """A grid with the same direction and centre covering the same field of view at a new spacing."""
        new_spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
        extent = np.asarray(self.size) * np.asarray(self.spacing)
        new_size = np.maximum(1, np.round(extent / new_spacing)).astype(int)
        origin = self.center - self.direction_matrix @ (new_spacing * (new_size - 1) / 2)
        return Grid(tuple(new_size), tuple(new_spacing), tuple(origin), self.direction)

    def rows(self, slab: slice) -> Grid:
        """The sub-grid of the slices ``slab`` along k (the tensor's first spatial dimension)."""
        ks = range(self.size[2])[slab]
        origin = self.index_to_world(np.array([0.0, 0.0, float(ks.start)]))
        return Grid((self.size[0], self.size[1], len(ks)), self.spacing, tuple(origin), self.direction)

    def pulled_back(self, matrix: np.ndarray) -> Grid:
        """The grid whose world point ``y`` is this grid's world point ``matrix @ y`` (4x4, world mm).

        Sampling this grid's data at ``y`` equals sampling it at ``matrix @ y``: a linear transform
        folded into the grid. The result's axes need not be orthonormal (spacing is folded into
        ``direction``), so it is for sampling only, not for writing files.
        """
        m = np.linalg.inv(np.asarray(matrix, dtype=float)) @ self._index_to_world()
        return Grid(self.size, (1.0, 1.0, 1.0), tuple(m[:3, 3]), tuple(m[:3, :3].ravel()))

    # --------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """Tensor spatial shape (nz, ny, nx)."""
        return self.size[::-1]

    @property
    def numel(self) -> int:
        return int(np.prod(self.size))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def center(self) -> np.ndarray:
        """World position of the grid's centre (mm)."""
        return self.index_to_world(0.5 * (np.asarray(self.size, dtype=float) - 1))

    # ------------------------------------------------------------------ frames
    def matrix(self, src: str, dst: str) -> np.ndarray:
        """4x4 homogeneous matrix (float64) mapping ``src`` coordinates to ``dst`` coordinates
        (a copy of one computed once per grid and pair of frames: a per-pair optimisation asks for
        the same grids' matrices at every step)."""
        return _frame_matrix(self, src, dst).copy()

    def _index_to_world(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    def _normalised_to_index(self) -> np.ndarray:
        # -1 and 1 are the first and last voxel centres; an axis of one voxel has it at 0 (where
        # grid_sample, with align_corners, reads that voxel whatever the coordinate)
        size = np.asarray(self.size, dtype=float)
        m = np.diag([*(np.maximum(size - 1, 1) / 2), 1.0])
        m[:3, 3] = (size - 1) / 2
        return m

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """World (mm) coordinates of continuous indices ``[..., 3]`` (numpy, float64)."""
        m = self._index_to_world()
        return np.asarray(index, dtype=float) @ m[:3, :3].T + m[:3, 3]

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous indices of world points ``[..., 3]`` (numpy, float64)."""
        m = self.matrix("world", "index")
        return np.asarray(points, dtype=float) @ m[:3, :3].T + m[:3, 3]

    def world_points(self, dtype: torch.dtype | None = None, device=None, slab: slice = slice(None)) -> torch.Tensor:
        """World coordinates of every voxel centre, tensor ``[nz, ny, nx, 3]`` (x, y, z last);
        ``slab`` selects a range of k (slices) only."""
        import torch

        dtype = dtype or torch.get_default_dtype()
        m = torch.as_tensor(self._index_to_world(), dtype=dtype, device=device)
        k, j, i = (torch.arange(n, dtype=dtype, device=device) for n in self.shape)
        k = k[slab]
        # world = origin + i * a_i + j * a_j + k * a_k, a_* the columns of D @ diag(spacing)
        return (
            m[:3, 3]
            + i[None, None, :, None] * m[:3, 0]
            + j[None, :, None, None] * m[:3, 1]
            + k[:, None, None, None] * m[:3, 2]
        )

    def parallel_to(self, other: Grid) -> bool:
        """True if the two grids' axes are parallel, each index axis of one along the same index
        axis of the other (so resampling one onto the other is separable, axis by axis)."""
        n = other.matrix("world", "index")[:3, :3] @ self.matrix("index", "world")[:3, :3]
        return bool(np.allclose(n, np.diag(np.diag(n)), atol=1e-9 * np.abs(n).max()))

    def same_as(self, other: Grid, tol: float = 1e-4) -> bool:
        """True if both grids describe the same voxels (within ``tol`` mm / direction cosine)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


@functools.lru_cache(maxsize=1024)
def _frame_matrix(grid: Grid, src: str, dst: str) -> np.ndarray:
    """:meth:`Grid.matrix`, cached."""
    if src not in FRAMES or dst not in FRAMES:
        raise ValueError(f"frames are {FRAMES}, got {src!r} -> {dst!r}")
    to_world = {"index": grid._index_to_world(), "world": np.eye(4)}
    to_world["normalised"] = to_world["index"] @ grid._normalised_to_index()
    return np.linalg.inv(to_world[dst]) @ to_world[src]
