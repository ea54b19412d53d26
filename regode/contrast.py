"""The similarity a pair calls for, and the finest level it is registered at.

A registration between two images of one contrast (two T1s: a subject and a template, two
subjects) is best driven by local normalised cross-correlation, as ANTs' SyN scripts and greedy
do; across contrasts (T1 against FLAIR or T2) by mutual information. :func:`choose_similarity`
tells the two apart on the pair itself, once it is roughly aligned: over the fixed head, the
intensities of one contrast are related by a near-linear, increasing map, so the squared Pearson
correlation ``r^2`` explains most of what the correlation ratio ``eta^2`` (Roche et al., 1998:
the share of one image's variance explained by any function of the other) explains. Across
contrasts the relation is not monotonic or is decreasing. Pairs whose dependence is too weak to
judge (eta^2 < 0.3, e.g. badly misaligned) keep mutual information, which is never wrong, only
less sharp. The ratios measured on real pairs, and why the threshold is where it is:
docs/results.md.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import Grid

LINEARITY = 0.8
"""one contrast: r > 0 and r^2 >= LINEARITY * eta^2."""
MIN_DEPENDENCE = 0.3
"""eta^2 below this: too little shared structure to judge; mutual information."""
BINS = 32
MIN_FINE = 1.0
"""mm: the fine level follows the fixed image's spacing, but no finer than this."""


def correlation_ratio(x: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> float:
    """``eta^2(x | y)``: the share of x's variance explained by y's intensity bin."""
    span = (y.max() - y.min()).clamp(min=1e-12)
    index = ((y - y.min()) / span * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).to(x.dtype)
    mean = torch.bincount(index, x, minlength=bins) / count.clamp(min=1)
    total = x.var(unbiased=False).clamp(min=1e-12)
    return float(1 - (x - mean[index]).square().mean() / total)


def choose_similarity(fixed: torch.Tensor, moved: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[str, dict]:
    """``"ncc"`` (one contrast) or ``"mi"`` (across contrasts) for a fixed image and the moving image
    sampled on its grid through the current transform (same shape), measured where ``keep`` (and
    both images are non-zero); and the figures behind the choice."""
    inside = (fixed > 0) & (moved > 0)
    if keep is not None:
        inside &= keep.bool()
    a, b = fixed[inside].double(), moved[inside].double()
    if a.numel() < 64 or float(a.std()) == 0 or float(b.std()) == 0:
        return "mi", {"r": None, "eta2": None, "voxels": int(a.numel())}
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    eta2 = max(correlation_ratio(a, b), correlation_ratio(b, a))
    same = r > 0 and eta2 >= MIN_DEPENDENCE and r * r >= LINEARITY * eta2
    return ("ncc" if same else "mi"), {"r": r, "eta2": eta2, "voxels": int(a.numel())}


def fine_spacing(requested: float | None, image: Grid, working: float, at_working: bool = False) -> float | None:
    """The fine level's spacing (mm): ``requested``, or the fixed image's finest spacing (at least
    :data:`MIN_FINE`) where None; None when that is not finer than the ``working`` spacing (or
    ``requested`` is 0: no fine level). ``at_working``: the level also runs at the working spacing
    itself, for a fine level that is more than finer images (``register``'s: a finer B-spline
    correction with the pair's own similarity)."""
    if requested == 0:
        return None
    spacing = max(MIN_FINE, float(np.min(image.spacing))) if requested is None else float(requested)
    return spacing if spacing < working * (1.01 if at_working else 0.99) else None
