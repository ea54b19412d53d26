"""Reading and writing 3D images (NIfTI, MetaImage, NRRD) with their full geometry.

Orientation is handled by SimpleITK: whatever the file stores (RAS or LAS NIfTI, oblique
qform/sform, MetaImage direction), the :class:`~regode.grid.Grid` read here is in ITK's
world LPS mm, and writing sets the same grid back.
"""

from __future__ import annotations

import gzip
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from ..errors import RegodeError
from ..grid import Grid
from .atomic import atomic_output

IMAGE_EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
sitk.ProcessObject.SetGlobalWarningDisplay(
    False
)  # ITK's warnings (a sheared sform, ...) are not a user's line: regode says what matters


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


def _nifti_pixels(path: str | os.PathLike, size: tuple[int, ...], components: int, what: str) -> np.ndarray | None:
    """NIfTI pixels read with nibabel as ``[nz, ny, nx(, C)]`` (None if the layout is unexpected).

    ITK's NIfTI reader silently turns NaN into 0, so regode reads NIfTI pixels with nibabel (NaN
    kept and reported) and takes the geometry from ITK's reading of the header. A ``.nii.gz`` is
    decompressed whole first, so that its CRC and length are checked (neither ITK nor nibabel
    checks them when they read only the declared bytes): a damaged file is refused, not read as
    garbage."""
    raw = Path(path).read_bytes()
    if str(path).lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise RegodeError(
                f"{what} {path} is damaged: its compressed data is truncated or corrupt ({exc})"
            ) from None
    nii = None
    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            nii = kind.from_bytes(raw)
            break
        except Exception as exc:  # nibabel's header errors: try the other NIfTI version, then give up
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if nii is None:
        raise RegodeError(f"{what} {path} is damaged or not NIfTI: {reason}")
    shape = nii.shape
    if tuple(shape[:3]) != tuple(size):
        return None
    stored = int(np.prod(shape)) * nii.get_data_dtype().itemsize
    if len(raw) < int(nii.header.get_data_offset()) + stored:
        raise RegodeError(
            f"{what} {path} is truncated: its header declares {stored} bytes of pixels, the file holds fewer"
        )
    array = np.asanyarray(nii.dataobj)
    if components == 1 and array.ndim == 3:
        return np.ascontiguousarray(array.transpose(2, 1, 0))
    if components > 1 and array.ndim == 5 and shape[3] == 1 and shape[4] == components:
        return np.ascontiguousarray(array[:, :, :, 0, :].transpose(2, 1, 0, 3))
    return None


def _check_size(reader, path, what: str) -> None:
    """Refuse a header that declares more pixels than the machine can hold (before any is read), or
    than an uncompressed file holds."""
    size, ncomp = reader.GetSize(), reader.GetNumberOfComponents()
    itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID(), ncomp)).dtype.itemsize
    voxels = int(np.prod(size, dtype=np.int64)) * ncomp
    check_room(size, path, what, ncomp * (itemsize + 4), "to read")  # the stored pixels and their float32 copy
    shape = "x".join(str(s) for s in size)
    lower = str(path).lower()
    if (
        lower.endswith((".nii", ".mha", ".nrrd"))
        and Path(path).stat().st_size < voxels * itemsize
        and not _compressed(path)
    ):
        raise RegodeError(
            f"{what} {path} is truncated: its header declares {shape} voxels "
            f"({voxels * itemsize} bytes), the file holds {Path(path).stat().st_size}"
        )


def check_room(size, path, what: str, bytes_per_voxel: int, doing: str = "to hold") -> None:
    """Refuse a grid of ``size`` voxels, ``bytes_per_voxel`` each, that the machine's free memory
    cannot hold (a grid read from ``path``'s header: a damaged header, or an image too large)."""
    needed = int(np.prod(size, dtype=np.int64)) * bytes_per_voxel
    available = _available_memory()
    if available is not None and needed > available:
        shape = "x".join(str(s) for s in size)
        raise RegodeError(
            f"{what} {path} declares {shape} voxels ({needed / 2**30:.1f} GiB {doing}), more than this "
            f"machine's free memory ({available / 2**30:.1f} GiB): a damaged header, or an image too large"
        )


def _compressed(path) -> bool:
    """A MetaImage or NRRD file whose header says its data is compressed (NIfTI: never, in .nii)."""
    lower = str(path).lower()
    if lower.endswith(".nii"):
        return False
    with open(path, "rb") as f:
        head = f.read(4096).decode("latin-1").lower()
    return (
        "compresseddata = true" in head or "encoding: gz" in head or "encoding: gzip" in head or "encoding: bz" in head
    )


def _available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def read_image(
    path: str | os.PathLike, *, components: int | None = 1, what: str = "image", exact: bool = False
) -> Image:
    """Read a 3D image. ``components`` is the number of values per voxel required (1 for scalar
    images, 3 for displacement fields, None for any); ``what`` names the image in error messages.
    ``exact`` (label images): integer pixels beyond float32's exact range (2^24) are kept in
    float64, exact for every value up to 2^53, so that label values survive resampling."""

    reader = _open(path)
    _check_3d(reader, path, what, components)
    _check_size(reader, path, what)
    ncomp = reader.GetNumberOfComponents()
    array = None
    if str(path).lower().endswith((".nii", ".nii.gz")):
        array = _nifti_pixels(path, reader.GetSize(), ncomp, what)
    if array is None:
        try:
            array = sitk.GetArrayFromImage(reader.Execute())  # a copy, [nz, ny, nx] or [nz, ny, nx, C]
        except RuntimeError as exc:
            detail = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            raise RegodeError(f"cannot read {what} {path}: {detail[-1] if detail else 'damaged file'}") from None
    dtype = array.dtype
    wide = (
        exact
        and np.issubdtype(dtype, np.integer)
        and array.size
        and max(abs(int(array.min())), abs(int(array.max()))) >= 2**24
    )
    if wide and max(abs(int(array.min())), abs(int(array.max()))) > 2**53:
        raise RegodeError(f"{what} {path} holds label values beyond 2^53, which regode cannot resample exactly")
    data = array.astype(np.float64 if wide else np.float32, copy=False)
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
        with (
            open(raw, "rb") as src,
            open(path, "wb") as out,
            gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=0, mtime=0) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 24)
    finally:
        os.remove(raw)
