"""Brain extraction of T1-weighted heads with deepbet (Fisch et al., Computers in Biology and
Medicine, 2024; MIT licence), and whether an image is a head or an extracted brain.

deepbet ships its two TorchScript networks in its wheel (a bounding-box network on a 128^3 view of
the whole image, then a mask network on a 256^3 view of that box); nothing is downloaded. The
networks work on the image in RAS voxel order: :func:`extract` turns the voxel array to the closest
RAS axes, runs deepbet's own steps (its thresholding, largest connected component and filled
holes), and turns the mask back, so the mask lies on the input's grid whatever its orientation.
deepbet's view of the image is resampled to a fixed size, so it needs no resampling to 1 mm: on
2 mm T1 heads its masks agree with 1 mm runs to 0.1 Dice.

deepbet's package imports its GUI toolkit only in ``deepbet.ui``, which regode never imports.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import threading
import warnings

import numpy as np
import torch

from .errors import RegodeError
from .grid import Grid
from .io import Image

INSTALL = "pip install deepbet"
"""how a user puts deepbet (a regode dependency) back where it is missing."""
HEAD_SHARE = 0.25
"""an image is a head, not an extracted brain, when its bright voxels outside the brain mask fill
more than this share of the brain's volume (scalp, muscle, fat, neck: usually more than the brain
itself; an extracted brain: a thin shell where two extractions differ, a few percent)."""
BRIGHT = 0.2
"""bright: above this share of the brain's median intensity (above the noise of a head's background)."""


def _model_files() -> tuple[str, str]:
    """deepbet's mask and bounding-box networks, as its wheel installs them
    (``site-packages/data/models``), found through the package's file list without importing it."""
    if importlib.util.find_spec("deepbet") is None:
        raise RegodeError(f"brain extraction needs deepbet, which is not installed: {INSTALL}")
    distribution = importlib.metadata.distribution("deepbet")
    paths = []
    for name in ("model.pt", "bbox_model.pt"):
        path = distribution.locate_file(f"data/models/{name}")
        if not path.is_file():
            raise RegodeError(f"deepbet's network {path} is missing: reinstall it ({INSTALL} --force-reinstall)")
        paths.append(str(path))
    return paths[0], paths[1]


_LOCK = threading.Lock()
"""deepbet's extractor keeps the last bounding box between its steps: one extraction at a time per process."""


@functools.lru_cache(maxsize=2)
def _extractor(device: str):
    """deepbet's BrainExtraction with both networks on ``device`` (loaded once per process: a
    cohort's worker reuses it row after row)."""
    model, bbox_model = _model_files()
    try:
        from deepbet.bet import BrainExtraction
    except ImportError as exc:
        raise RegodeError(f"cannot import deepbet ({exc}): {INSTALL}") from None
    try:
        with warnings.catch_warnings():  # torch's deprecation of TorchScript: deepbet's networks are TorchScript
            warnings.simplefilter("ignore")
            bet = BrainExtraction(no_gpu=True, model_path=model, bbox_model_path=bbox_model)
    except RuntimeError as exc:
        raise RegodeError(f"cannot load deepbet's networks: {str(exc).splitlines()[0][:200]}") from None
    bet.model.to(device)
    bet.bbox_model.to(device)
    return bet


def _ras_orientation(grid: Grid) -> np.ndarray:
    """nibabel's orientation (``[[axis, flip], ...]`` per voxel axis i, j, k) that turns an array
    indexed ``[i, j, k]`` on ``grid`` to the closest RAS axes."""
    import nibabel as nib

    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.matrix("index", "world")  # LPS -> RAS
    return nib.io_orientation(affine)


def extract(image: Image, threshold: float = 0.5, device: str | torch.device = "cpu") -> torch.Tensor:
    """The brain mask of the T1-weighted ``image`` (``[1, 1, nz, ny, nx]`` float32, 0 or 1, on its
    grid): voxels whose deepbet brain probability exceeds ``threshold``, the largest connected
    component, holes filled."""
    from nibabel.orientations import apply_orientation, ornt_transform

    if not 0 < threshold < 1:
        raise RegodeError(f"--threshold must lie between 0 and 1, not {threshold}")
    bet = _extractor(str(torch.device(device)))
    orientation = _ras_orientation(image.grid)
    array = image.data[0, 0].detach().cpu().numpy().transpose(2, 1, 0)  # [i, j, k]
    ras = np.ascontiguousarray(apply_orientation(array, orientation), dtype=np.float32)
    if not np.ptp(ras) > 0:
        raise RegodeError(f"{image.path or 'the image'} is constant: there is no brain to extract")
    with _LOCK, torch.no_grad():
        try:
            probability = bet.run_model(ras.copy())
        except AssertionError:  # deepbet's own check: no foreground for its bounding box
            raise RegodeError(f"deepbet found no head in {image.path or 'the image'}") from None
        mask = bet.postprocess(probability > threshold)
    back = ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), orientation)
    mask = apply_orientation(mask.astype(np.float32), back).transpose(2, 1, 0)
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def volume_ml(mask: torch.Tensor, grid: Grid) -> float:
    """The volume of a binary mask on ``grid`` in mL."""
    return float(mask.sum()) * float(np.prod(grid.spacing)) / 1000.0


def is_head(image: Image, mask: torch.Tensor) -> tuple[bool, float]:
    """Whether ``image`` is a head (skull and scalp present) rather than an extracted brain, given
    its brain ``mask``; and the figure it is decided on: the volume of bright voxels (above
    :data:`BRIGHT` of the brain's median) outside the mask, as a share of the brain's volume
    (a head when above :data:`HEAD_SHARE`)."""
    data, inside = image.data[0, 0], mask[0, 0] > 0.5
    if not inside.any():
        return True, float("inf")
    level = BRIGHT * float(data[inside].median())
    share = float(((data > level) & ~inside).sum()) / float(inside.sum())
    return share > HEAD_SHARE, share
