"""regode's public API: what the command line, the benchmark and users' scripts call.

    import regode
    fixed, moving = regode.read_image("t1.nii.gz"), regode.read_image("flair.nii.gz")
    result = regode.register(fixed, moving, regode.RegisterConfig(model="rigid"))
    moved = regode.apply_transforms(moving, fixed.grid, result.transform)
    regode.register_files("t1.nii.gz", "flair.nii.gz", "out_", regode.RegisterConfig())  # files to files

Images are :class:`~regode.io.Image` (data, grid in world LPS mm); a :class:`~regode.result.Result`
holds the fixed -> moving mapping ``linear(field(x))``.
"""

from __future__ import annotations

import torch

# re-exported (regode.API names them; regode/__init__.py hands them out on first use)
from .brain import extract as extract_brain  # noqa: F401
from .cohort.template import Subject, build_template, read_subjects  # noqa: F401
from .config import BrainExtractConfig  # noqa: F401
from .errors import RegodeError  # noqa: F401
from .grid import Grid  # noqa: F401
from .heads import extract_files  # noqa: F401
from .io import Image, check_room, load_transform_chain, read_grid, read_image, save_transform, write_image  # noqa: F401
from .io.atomic import check_outputs
from .nir.config import FieldConfig, FitConfig  # noqa: F401
from .nir.fit import fit_images
from .odenet.config import RegisterConfig
from .odenet.register import load_models, register_images  # noqa: F401
from .pipeline import fit_files, read_masks, register_files  # noqa: F401
from .result import Result
from .templates import is_template, template_file, tissue_classes  # noqa: F401
from .transforms import Transform
from .warp import resample


def register(
    fixed: Image,
    moving: Image,
    config: RegisterConfig = RegisterConfig(),
    models: dict | None = None,
    channels: tuple = (),
) -> Result:
    """MS-ODENet registration of two images in memory (``models``: :func:`load_models`' result, to
    load the weights once for many pairs; ``channels``: more ``(fixed, moving)`` image pairs of the
    same subjects, such as their FLAIRs, each compared with its own similarity)."""
    return register_images(fixed, moving, config, models, read_masks(config), channels)


def fit_field(fixed: Image, moving: Image, config: FitConfig = FitConfig()) -> Result:
    """Neural-field registration (NIR) of two images in memory."""
    return fit_images(fixed, moving, config, masks=read_masks(config))


def load_transforms(specs: list[str]) -> Transform:
    """ITK/ANTs transform files in antsApplyTransforms ``-t`` order (``"[file.mat,1]"`` inverts a
    linear one) as one fixed -> moving transform."""
    return load_transform_chain(list(specs))


def apply_transforms(
    image: Image, reference: Grid, transform: Transform, interp: str = "linear", default_value: float = 0.0
) -> torch.Tensor:
    """``image`` resampled onto ``reference`` through ``transform`` (fixed -> moving)."""
    return resample(image.data, image.grid, reference, transform, interp, default_value)


def warp_files(
    input,
    reference,
    output,
    specs: list[str],
    interp: str = "linear",
    default_value: float = 0.0,
    threads: int | None = None,
) -> None:
    """``regode warp``: read, resample onto the reference's grid, write with the input's pixel type."""
    if threads:
        torch.set_num_threads(threads)
    check_outputs([output], [input, reference, *specs])
    input, reference = (template_file(p) if is_template(p) else p for p in (input, reference))
    image = read_image(input, components=None, what="input image", exact=interp in ("label", "nearest"))
    grid = read_grid(reference, what="reference image")
    # the resampled image (float32) and its copy in the input's pixel type, per channel
    per_voxel = image.data.shape[1] * (4 + image.dtype.itemsize)
    check_room(grid.size, reference, "reference image", per_voxel, "to warp onto")
    chain = load_transforms(specs)
    if interp == "label" and image.data.shape[1] != 1:
        raise RegodeError(f"label interpolation needs a scalar label image, {input} has vectors")
    write_image(apply_transforms(image, grid, chain, interp, default_value), grid, output, image.dtype)


from . import API  # noqa: E402  (the names regode/__init__.py exports, in one place)

__all__ = list(API)
