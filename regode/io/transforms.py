"""ITK/ANTs transform files, read and written through SimpleITK.

* linear transforms: ``.mat`` (ANTs' ``0GenericAffine.mat``, ITK MATLAB v4), ``.txt`` / ``.tfm``
  (ITK text), written as ``AffineTransform_double_3_3``;
* displacement fields: a 3-vector image (``1Warp.nii.gz``) of LPS mm displacements on the fixed
  grid, mapping fixed points to moving points (also ``.mha`` / ``.nrrd``);
* composite transforms: ``.h5`` (ITK HDF5), linear and displacement-field parts.

Transform specs on the command line follow antsApplyTransforms: ``file`` or ``[file,1]`` for the
inverse of a linear transform, in antsApplyTransforms' order (see :func:`load_transform_chain`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import RegodeError
from ..grid import Grid
from ..transforms import Affine, Compose, DisplacementField, Linear, Transform
from .atomic import atomic_output
from .images import has_image_extension, read_image, to_sitk, write_image

LINEAR_EXTENSIONS = (".mat", ".txt", ".tfm")
COMPOSITE_EXTENSIONS = (".h5", ".hdf5")


def parse_transform_spec(spec: str) -> tuple[str, bool]:
    """``"file"`` -> (file, False); ``"[file,1]"`` -> (file, True); ``"[file,0]"`` -> (file, False)."""
    text = spec.strip()
    if text.startswith("[") and text.endswith("]"):
        parts = [p.strip() for p in text[1:-1].split(",")]
        if len(parts) != 2 or parts[1] not in ("0", "1"):
            raise RegodeError(f"transform spec {spec!r} is not of the form [file,0] or [file,1]")
        return parts[0], parts[1] == "1"
    return text, False


def _kind(path: str) -> str:
    lower = path.lower()
    if has_image_extension(lower):
        return "field"
    if lower.endswith(LINEAR_EXTENSIONS + COMPOSITE_EXTENSIONS):
        return "itk"
    raise RegodeError(
        f"unsupported transform file {path}: expected .mat/.txt/.tfm (linear), .h5 (composite) "
        "or a displacement-field image (.nii.gz, .nii, .mha, .nrrd)"
    )


def _from_sitk(tx, path: str) -> Transform:
    """Convert a SimpleITK transform (any linear kind, displacement field, composite)."""

    if tx.GetDimension() != 3:
        raise RegodeError(f"transform {path} is {tx.GetDimension()}D; a 3D transform is needed")
    if tx.IsLinear():
        # any linear ITK kind (Euler, versor, similarity, affine, translation, ...): read the
        # affine off the mapping of the origin and the unit vectors
        origin = np.asarray(tx.TransformPoint((0.0, 0.0, 0.0)))
        matrix = np.stack([np.asarray(tx.TransformPoint(tuple(e))) - origin for e in np.eye(3)], axis=1)
        center = np.asarray(tx.GetCenter()) if hasattr(tx, "GetCenter") else np.zeros(3)
        translation = origin - center + matrix @ center
        return Affine(torch.from_numpy(matrix), torch.from_numpy(translation), torch.from_numpy(center))
    tx = tx.Downcast()
    if isinstance(tx, sitk.CompositeTransform):
        parts = [tx.GetNthTransform(i) for i in range(tx.GetNumberOfTransforms())]
        if any(
            isinstance(part.Downcast(), sitk.CompositeTransform)
            and part.GetNumberOfTransforms() == tx.GetNumberOfTransforms()
            for part in parts
        ):  # SimpleITK wraps a kind it does not know in a composite of itself
            raise RegodeError(f"unsupported transform kind in {path}")
        return Compose([_from_sitk(part, path) for part in parts])
    if isinstance(tx, sitk.DisplacementFieldTransform):
        field_image = tx.GetDisplacementField()
        arr = sitk.GetArrayFromImage(field_image)  # [nz, ny, nx, 3]
        field = torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0)))
        return DisplacementField(Grid.from_sitk(field_image), field)
    raise RegodeError(f"unsupported transform kind {tx.GetName()} in {path}")


def load_transform(path: str | os.PathLike, invert: bool = False) -> Transform:
    """Read one transform file (float64 parameters); ``invert`` inverts a linear transform."""

    path = str(path)
    kind = _kind(path)
    if not Path(path).exists():
        raise RegodeError(f"transform file not found: {path}")
    if kind == "field":
        image = read_image(path, components=3, what="displacement field")
        transform: Transform = DisplacementField(image.grid, image.data)
    else:
        _check_transform_list(path)
        try:
            tx = sitk.ReadTransform(path)
        except RuntimeError as exc:
            reason = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise RegodeError(
                f"cannot read transform {path}: {reason[-1].strip() if reason else 'unreadable'}"
            ) from None
        transform = _from_sitk(tx, path)
    if invert:
        if not transform.is_linear:
            raise RegodeError(
                f"[{path},1]: only linear transforms can be inverted on the fly; "
                "use the matching InverseWarp file for a displacement field"
            )
        affine = transform.as_affine() if isinstance(transform, Compose) else Compose([transform]).as_affine()
        if abs(float(torch.linalg.det(affine.matrix[0]))) < 1e-12:
            raise RegodeError(f"[{path},1]: the transform's matrix is singular (it flattens space) and has no inverse")
        transform = affine.inverse()
    return transform


def _check_transform_list(path: str) -> None:
    """An ITK text transform file (.tfm, .txt) may hold a list of transforms. ITK's reader returns
    the list, and SimpleITK keeps only the first. A list that does not start with a
    CompositeTransform (whose components follow it) holds independent transforms, e.g. one per
    volume of a head-motion correction, not one mapping: it is refused, never cut to its first."""
    if not path.lower().endswith((".tfm", ".txt")):
        return
    try:
        with open(path, errors="replace") as f:
            kinds = [line.split(":", 1)[1].strip() for line in f if line.startswith("Transform:")]
    except OSError as exc:
        raise RegodeError(f"cannot read transform {path}: {exc.strerror or exc}") from None
    if len(kinds) > 1 and not kinds[0].startswith("CompositeTransform"):
        raise RegodeError(
            f"{path} holds a list of {len(kinds)} transforms ({kinds[0]}, ...), not one mapping; "
            "write each to its own file and pass the one you mean"
        )


def load_transform_chain(specs: list[str]) -> Compose:
    """The mapping antsApplyTransforms builds from ``-t`` options in command-line order.

    ANTs pushes the transforms onto an ITK composite in reverse order, so for a reference
    (fixed-space) point the FIRST ``-t`` acts first: ``-t 1Warp -t 0GenericAffine.mat`` maps
    ``x -> Affine(Warp(x))``; seen from the image, the last ``-t`` is applied first (the moving
    image is moved by the affine, then warped). Verified against ``ants.apply_transforms``.
    """
    return Compose([load_transform(*parse_transform_spec(s)) for s in reversed(specs)])


def _sitk_linear(transform: Linear | Compose):

    affine = transform.as_affine() if isinstance(transform, Compose) else transform
    if affine.matrix.shape[0] != 1:
        raise ValueError("only a single (batch size 1) transform can be written")
    out = sitk.AffineTransform(3)
    out.SetMatrix(affine.matrix[0].detach().double().cpu().numpy().ravel().tolist())
    out.SetTranslation(affine.translation[0].detach().double().cpu().numpy().tolist())
    out.SetCenter(affine.center[0].detach().double().cpu().numpy().tolist())
    return out


def _sitk_field(transform: Transform, grid: Grid):

    field = transform.displacement(grid)[0].detach().double().cpu()
    return sitk.DisplacementFieldTransform(to_sitk(field, grid, np.float64))


def save_transform(transform: Transform, path: str | os.PathLike, grid: Grid | None = None) -> None:
    """Write ``transform`` to ``path``: linear to .mat/.txt/.tfm, anything to .h5 (composite) or to
    a displacement-field image sampled on ``grid`` (the fixed image's grid; defaults to the
    field's own grid)."""

    path = str(path)
    kind = _kind(path)
    if grid is None and isinstance(transform, DisplacementField):
        grid = transform.grid
    if kind == "field":
        if grid is None:
            raise ValueError("writing a displacement field needs the grid to sample it on")
        field = transform.displacement(grid)[0]
        write_image(field, grid, path, np.float32)
        return
    if path.lower().endswith(LINEAR_EXTENSIONS):
        if not transform.is_linear:
            raise RegodeError(f"cannot write a non-linear transform to {path}; use .h5 or a warp image")
        tx = _sitk_linear(transform)
    else:
        parts = list(transform.transforms) if isinstance(transform, Compose) else [transform]
        converted = []
        for part in parts:
            if part.is_linear:
                converted.append(_sitk_linear(part))
            else:
                part_grid = grid or getattr(part, "grid", None)
                if part_grid is None:
                    raise ValueError("writing a non-linear transform to .h5 needs a grid")
                converted.append(_sitk_field(part, part_grid))
        tx = sitk.CompositeTransform(converted)
    with atomic_output(path) as tmp:
        try:
            sitk.WriteTransform(tx, tmp)
        except RuntimeError as exc:
            raise RegodeError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from None
