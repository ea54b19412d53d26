"""Reading and writing 3D images (NIfTI, MetaImage, NRRD) with their full geometry.

Orientation is handled by SimpleITK: whatever the file stores (RAS or LAS NIfTI, oblique
qform/sform, MetaImage direction), the :class:`~regode.grid.Grid` read here is in ITK's
world LPS mm, and writing sets the same grid back.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import RegodeError
from ..grid import Grid
from .atomic import atomic_output

IMAGE_EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def has_image_extension(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Image:
    """A 3D image: ``data [1, C, nz, ny, nx]`` float32 (C = 1 for scalar images), its grid and
    the numpy dtype of the stored pixels (kept when the image is written back)."""

    data: torch.Tensor
    grid: Grid
    dtype: np.dtype
    path: str | None = None


def _open(path: str | os.PathLike):
    """A SimpleITK reader with the header read (no pixels yet); clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise RegodeError(f"file not found: {path}")
    if path.is_dir():
        raise RegodeError(f"{path} is a folder, not an image file")
    if not os.access(path, os.R_OK):
        raise RegodeError(f"cannot read {path}: permission denied")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        detail = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise RegodeError(f"cannot read image {path}: {detail[-1] if detail else 'unknown format'}") from None
    return reader


def _check_3d(reader, path, what: str, components: int | None) -> None:
    dim, size = reader.GetDimension(), reader.GetSize()
    if dim != 3 or min(size) < 2:
        shape = "x".join(str(s) for s in size)
        kind = "2D" if dim == 2 or (dim == 3 and min(size) < 2) else f"{dim}D"
        raise RegodeError(f"{what} {path} is {kind} ({shape}); a 3D image is needed")
    ncomp = reader.GetNumberOfComponents()
    if components is not None and ncomp != components:
        raise RegodeError(f"{what} {path} has {ncomp} values per voxel; {components} expected")


def _grid(reader) -> Grid:
    return Grid(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def read_grid(path: str | os.PathLike, what: str = "image") -> Grid:
    """The grid of a 3D image file, from its header only (pixels are not read)."""
    reader = _open(path)
    _check_3d(reader, path, what, None)
    return _grid(reader)


def _nifti_pixels(path: str | os.PathLike, size: tuple[int, ...], components: int) -> np.ndarray | None:
    """NIfTI pixels read with nibabel as ``[nz, ny, nx(, C)]`` (None if the layout is unexpected).

    ITK's NIfTI reader silently turns NaN into 0, so regode reads NIfTI pixels with nibabel (one
    decompression, NaN kept and reported) and takes the geometry from ITK's reading of the header.
    """
    import nibabel as nib

    nii = nib.load(str(path))
    shape = nii.shape
    if tuple(shape[:3]) != tuple(size):
        return None
    array = np.asanyarray(nii.dataobj)
    if components == 1 and array.ndim == 3:
        return np.ascontiguousarray(array.transpose(2, 1, 0))
    if components > 1 and array.ndim == 5 and shape[3] == 1 and shape[4] == components:
        return np.ascontiguousarray(array[:, :, :, 0, :].transpose(2, 1, 0, 3))
    return None


def read_image(path: str | os.PathLike, *, components: int | None = 1, what: str = "image") -> Image:
    """Read a 3D image. ``components`` is the number of values per voxel required (1 for scalar
    images, 3 for displacement fields, None for any); ``what`` names the image in error messages."""

    reader = _open(path)
    _check_3d(reader, path, what, components)
    ncomp = reader.GetNumberOfComponents()
    array = None
    if str(path).lower().endswith((".nii", ".nii.gz")):
        array = _nifti_pixels(path, reader.GetSize(), ncomp)
    if array is None:
        array = sitk.GetArrayFromImage(reader.Execute())  # a copy, [nz, ny, nx] or [nz, ny, nx, C]
    dtype = array.dtype
    data = array.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise RegodeError(f"{what} {path} contains NaN or infinite values")
    data = data[None] if ncomp == 1 else np.moveaxis(data, -1, 0)
    return Image(torch.from_numpy(np.ascontiguousarray(data))[None], _grid(reader), dtype, str(path))


def to_sitk(data: np.ndarray | torch.Tensor, grid: Grid, dtype=None):
    """A SimpleITK image of ``data [C, nz, ny, nx]`` or ``[nz, ny, nx]`` on ``grid``; integer
    ``dtype`` rounds and clips to the type's range."""

    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    is_vector = data.ndim == 4
    if is_vector:
        data = np.moveaxis(data, 0, -1)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
    # one copy into C order (a vector field's components interleaved): astype(order="C") does it
    # several times faster than astype and then ascontiguousarray
    data = data.astype(dtype or data.dtype, order="C", copy=False)
    img = sitk.GetImageFromArray(data, isVector=is_vector)
    return grid.apply_to(img)


def write_image(data: np.ndarray | torch.Tensor, grid: Grid, path: str | os.PathLike, dtype=None) -> None:
    """Write ``data`` ([1, C, nz, ny, nx], [C, nz, ny, nx] or [nz, ny, nx]) on ``grid`` to ``path``
    atomically (a failure leaves no file)."""

    if not has_image_extension(path):
        raise RegodeError(f"cannot write {path}: unknown image extension (use one of {', '.join(IMAGE_EXTENSIONS)})")
    if isinstance(data, torch.Tensor) and data.dim() == 5:
        data = data[0]
    img = to_sitk(data, grid, dtype)
    with atomic_output(path) as tmp:
        try:
            if str(path).endswith(".nii.gz") and img.GetNumberOfComponentsPerPixel() > 1:
                _write_stored_gzip(img, tmp)
            else:
                sitk.WriteImage(img, tmp, useCompression=str(path).endswith(".gz"))
        except (RuntimeError, OSError) as exc:
            raise RegodeError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from None


def _write_stored_gzip(img, path: str) -> None:
    """Write a ``.nii.gz`` whose gzip stream stores the NIfTI bytes uncompressed (deflate level 0).
    Displacement fields are float noise to zlib: level 1 gains little size for several times the
    time; every gzip reader reads it."""


    raw = path[: -len(".gz")]
    sitk.WriteImage(img, raw, useCompression=False)
    try:
        with open(raw, "rb") as src, open(path, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=0, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    finally:
        os.remove(raw)
