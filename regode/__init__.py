"""regode: learned and per-pair 3D brain MRI registration with ANTs-compatible outputs.

The public API (regode.api) is available here: ``regode.register``, ``regode.fit_field``,
``regode.register_files``, ``regode.extract_brain``, ``regode.apply_transforms``, ``regode.read_image``,
``regode.load_transforms``, the configs and :class:`~regode.result.Result`. It is loaded on first
use, so that importing the package (and ``regode --help``) does not import torch.

Frames used throughout (see docs/concepts/conventions.md and docs/architecture.md):

* world: LPS millimetres, as ITK, SimpleITK and ANTs use; every transform maps
  world points of the fixed (reference) space to world points of the moving space;
* index: continuous voxel index (i, j, k) in ITK order (fastest axis first);
* normalised: index scaled to [-1, 1] per axis, corners aligned, the frame
  ``torch.nn.functional.grid_sample`` wants.
"""

from ._version import __version__

API = (
    "register",
    "fit_field",
    "register_files",
    "fit_files",
    "extract_brain",
    "extract_files",
    "tissue_classes",
    "build_template",
    "read_subjects",
    "Subject",
    "load_models",
    "apply_transforms",
    "warp_files",
    "read_image",
    "write_image",
    "read_grid",
    "load_transforms",
    "save_transform",
    "Image",
    "Grid",
    "Result",
    "Transform",
    "RegisterConfig",
    "FitConfig",
    "FieldConfig",
    "BrainExtractConfig",
    "RegodeError",
)


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'regode' has no attribute {name!r}")


__all__ = ["__version__", *API]
