"""Quality control of one registration: figures that flag a failure without a person, and a
picture a person can check at a glance (``PREFIXqc.png``).

Figures, measured on the fixed image's grid over its head (:func:`regode.preprocess.head_mask`):

- ``mi_before`` / ``mi_after``: Mattes mutual information between the fixed image and the moving
  image before registration (mapped by the identity, in world space) and after (warped);
- ``ncc_before`` / ``ncc_after``: their normalised cross-correlation (same contrast: near 1 when aligned);
- ``overlap_before`` / ``overlap_after``: the Dice overlap of the two head masks;
- ``jacobian_min`` / ``jacobian_max`` / ``folding_pct``: the extremes of the deformable part's
  Jacobian determinant and the share of the head where it is <= 0 (folding), for deformable results.

The picture: three orthogonal planes through the fixed head's centre, the fixed image in grey with
the moving image's edges in colour, before (top) and after (bottom) registration.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from .bench.metrics import jacobian_determinant
from .grid import Grid
from .losses import mattes_mutual_information
from .preprocess import head_mask, normalise
from .result import Result
from .transforms import Compose
from .warp import resample

SAMPLES = 200_000
"""head voxels the figures are measured on (every n-th, for a constant cost at any resolution)."""


def figures(fixed: np.ndarray, before: np.ndarray, after: np.ndarray, grid: Grid, result: Result) -> dict:
    """The QC figures (see the module doc) of normalised volumes ``[nz, ny, nx]`` on ``grid``."""
    head = head_mask(fixed)
    step = max(1, int(head.sum()) // SAMPLES)
    f = fixed[head][::step]
    out = {}
    for name, moved in (("before", before), ("after", after)):
        m = moved[head][::step]
        out[f"mi_{name}"] = float(
            mattes_mutual_information(torch.from_numpy(m)[None, None], torch.from_numpy(f)[None, None])
        )
        fc, mc = f - f.mean(), m - m.mean()
        out[f"ncc_{name}"] = float((fc * mc).sum() / max(np.sqrt((fc**2).sum() * (mc**2).sum()), 1e-12))
        moved_head = head_mask(moved)
        out[f"overlap_{name}"] = float(2 * (head & moved_head).sum() / max(head.sum() + moved_head.sum(), 1))
    if result.field is not None:
        with torch.no_grad():
            disp = result.field.field[0].detach().double().cpu().numpy()
        det = jacobian_determinant(disp, result.field.grid)
        on_field = resample(torch.from_numpy(fixed)[None, None], grid, result.field.grid, Compose([]))[0, 0].numpy()
        field_head = head_mask(on_field)
        region = det[field_head] if field_head.any() else det.ravel()
        out.update(
            jacobian_min=float(region.min()),
            jacobian_max=float(region.max()),
            folding_pct=float(100 * (region <= 0).mean()),
        )
    return out


QC_SPACING = 2.0
"""mm: the figures and the picture are made on the fixed grid at this spacing (or its own, if coarser)."""


def picture(fixed: np.ndarray, before: np.ndarray, after: np.ndarray, grid: Grid, title: str = "") -> bytes:
    """A PNG (bytes): three planes through the fixed head's centre, fixed in grey, the moving
    image's edges in colour, before and after registration. Planes are shown in the voxel
    array's axes, with the physical aspect of each plane. Thread-safe (no pyplot): the writer
    thread renders it while the next outputs are computed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # 0.3 s to import: only when a picture is made
    from matplotlib.figure import Figure

    planes = _planes(head_mask(fixed), grid)
    fig = Figure(figsize=(9, 6.2), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for row, (label, moved) in enumerate((("before", before), ("after", after))):
        edges = _edges(moved)
        for col, (name, cut, aspect) in enumerate(planes):
            ax = axes[row, col]
            ax.imshow(cut(fixed), cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=1)
            if cut(edges).any():
                ax.contour(
                    cut(edges),
                    levels=[0.5],
                    colors=["#ff4d4d" if row == 0 else "#38d9a9"],
                    linewidths=0.6,
                    origin="lower",
                )
            ax.set_title(f"{label}: {name}", color="white", fontsize=9)
            ax.axis("off")
    return _png(fig, title)


def _png(fig, title: str) -> bytes:
    """A QC figure as PNG bytes, with its title, on black."""
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, facecolor="black")
    return buffer.getvalue()


def _planes(region: np.ndarray, grid: Grid) -> list:
    """The three planes through ``region``'s centre (the volume's centre if it is empty): (name,
    the cut of a volume, the plane's physical aspect)."""
    k, j, i = np.argwhere(region).mean(0).round().astype(int) if region.any() else np.array(region.shape) // 2
    sx, sy, sz = grid.spacing
    return [
        ("axial", lambda v: v[k], sy / sx),
        ("coronal", lambda v: v[:, j], sz / sx),
        ("sagittal", lambda v: v[:, :, i], sz / sy),
    ]


def mask_picture(image: np.ndarray, mask: np.ndarray, grid: Grid, title: str = "") -> bytes:
    """A PNG (bytes): three planes through the centre of ``mask`` (a brain extraction), the
    normalised ``image`` in grey with the mask's outline in colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), facecolor="black")
    FigureCanvasAgg(fig)
    for ax, (name, cut, aspect) in zip(fig.subplots(1, 3), _planes(mask > 0.5, grid), strict=True):
        ax.imshow(cut(image), cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=1)
        if cut(mask).any():
            ax.contour(cut(mask), levels=[0.5], colors=["#38d9a9"], linewidths=0.8, origin="lower")
        ax.set_title(name, color="white", fontsize=9)
        ax.axis("off")
    return _png(fig, title)


def _edges(volume: np.ndarray) -> np.ndarray:
    """A binary map of ``volume``'s strong edges: gradient magnitude above its 90th percentile in
    the foreground."""
    gz, gy, gx = np.gradient(volume)
    magnitude = np.sqrt(gz**2 + gy**2 + gx**2)
    inside = volume > 0.05
    level = np.percentile(magnitude[inside], 90) if inside.any() else np.inf
    return (magnitude > level).astype(np.float32)


def assess(
    fixed_data: torch.Tensor,
    moving_data: torch.Tensor,
    warped: torch.Tensor,
    fixed_grid: Grid,
    moving_grid: Grid,
    result: Result,
    title: str = "",
):
    """The figures of a registration, and a function that renders its picture (PNG bytes), from the
    images as read and the warped moving image (all ``[1, 1, ...]``), on the fixed grid at
    :data:`QC_SPACING`. "Before" is the moving image resampled onto it by the identity (world space)."""
    grid = (
        fixed_grid.with_spacing(np.maximum(fixed_grid.spacing, QC_SPACING))
        if min(fixed_grid.spacing) < QC_SPACING
        else fixed_grid
    )
    identity = Compose([])
    volumes = (
        resample(fixed_data, fixed_grid, grid, identity),
        resample(moving_data, moving_grid, grid, identity),
        resample(warped, fixed_grid, grid, identity),
    )
    fixed, before, after = (normalise(v)[0, 0].numpy() for v in volumes)
    return figures(fixed, before, after, grid, result), lambda: picture(fixed, before, after, grid, title)
