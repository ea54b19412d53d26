"""Principal-axes alignment: a start for rigid registration that does not depend on how far the
moving image is rotated.

Each image's head (see :func:`regode.preprocess.head_mask`) has a centre and three principal axes. The
rotations that carry the fixed image's axes onto the moving image's are known up to the axes'
signs (four proper rotations); together with the plain translation between the head centres (the
start of every registration, :func:`regode.preprocess.head_center`) they are the candidates, and the one under which
the images share the most mutual information on a coarse grid wins. A head that is nearly round
(close principal variances), or no head at all, has no reliable axes: then the start is kept. The rigid
MS-ODENet stage starts
from the winner.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import RegodeError
from .grid import Grid
from .io import load_transform_chain
from .losses import local_ncc, mattes_mutual_information
from .preprocess import FOREGROUND, blur, foreground, head_center, head_moments
from .sampling import sample, sample_on_grid
from .transforms import Affine

MIN_RATIO = 1.1
"""the principal variances of both heads must differ by this factor (brains: 1.24 or more; a
sphere-like head has no axes to align), else only the start (the head centres' translation) is used."""
SIGNS = np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], dtype=float)


def candidates(fixed: tuple, moving: tuple) -> list[Affine]:
    """The four rotations that carry the fixed principal axes onto the moving ones (the axes' signs
    are unknown), each about the heads' centres: fixed -> moving maps, float64."""
    (c_f, _, a_f), (c_m, _, a_m) = fixed, moving
    if np.linalg.det(a_m @ a_f.T) < 0:
        a_m = a_m * np.array([1, 1, -1.0])
    maps = [a_m @ np.diag(s) @ a_f.T for s in SIGNS]
    return [Affine(torch.as_tensor(r), torch.as_tensor(c_m - r @ c_f)[None]) for r in maps]


def principal_axes(
    fixed: torch.Tensor,
    fixed_grid: Grid,
    moving: torch.Tensor,
    moving_grid: Grid,
    start: Affine,
    spacing: float = 6.0,
    heads: tuple | None = None,
) -> tuple[Affine, dict]:
    """Of ``start`` (the translation between the head centres) and the principal-axes candidates (see
    :func:`candidates`) for two working images (values in [0, 1]), the one under which the images
    share the most mutual information, measured at ``spacing`` mm; and a record of the choice.
    Without reliable axes (a round or empty head) ``start`` is returned. ``heads``: the two
    images' :func:`head_moments`, if already known."""
    maps, record = [start.double()], {}
    fixed_moments, moving_moments = (
        heads if heads is not None else (head_moments(fixed, fixed_grid), head_moments(moving, moving_grid))
    )
    if fixed_moments is None or moving_moments is None:
        record["skipped"] = "too few foreground voxels for a principal-axes alignment"
    else:
        ratios = np.array([min(v[1:] / np.maximum(v[:-1], 1e-12)) for _, v, _ in (fixed_moments, moving_moments)])
        record["variance_ratios"] = ratios.tolist()
        if np.all(np.isfinite(ratios) & (ratios >= MIN_RATIO)):
            maps += candidates(fixed_moments, moving_moments)
        else:
            record["skipped"] = f"principal variances closer than a factor {MIN_RATIO}: no reliable axes"
    if len(maps) == 1:
        return maps[0], {**record, "candidate_mi": [], "chosen": 0}
    coarse = fixed_grid.with_spacing(spacing)
    f = sample_on_grid(blur(fixed, [0.5 * spacing / s for s in fixed_grid.spacing]), fixed_grid, coarse)
    m = blur(moving, [0.5 * spacing / s for s in moving_grid.spacing])
    scores = []
    for linear in maps:
        warped = sample(m, moving_grid, linear.map_grid(coarse, dtype=fixed.dtype).to(fixed.device))
        scores.append(float(mattes_mutual_information(warped, f)))
    best = int(np.argmax(scores))
    return maps[best], {**record, "candidate_mi": scores, "chosen": best}


def initial_linear(specs: list[str], center_of_mass: bool, c_fix: torch.Tensor, c_mov: torch.Tensor) -> Affine:
    """The starting fixed -> moving linear map: ``specs`` (antsApplyTransforms order) if given,
    else the translation between the head centres ``c_fix`` and ``c_mov`` (with
    ``center_of_mass``), else the identity (float64)."""
    if specs:
        linear = load_transform_chain(specs)
        if not linear.is_linear:
            raise RegodeError("--initial-transform must be linear (rigid or affine)")
        return linear.as_affine().double()
    if center_of_mass:
        return Affine(torch.eye(3, dtype=torch.float64), (c_mov.double() - c_fix.double())[None])
    return Affine(torch.eye(3, dtype=torch.float64))


def starting_point(
    fixed: torch.Tensor,
    fixed_grid: Grid,
    moving: torch.Tensor,
    moving_grid: Grid,
    specs: list[str],
    center_of_mass: bool,
    axes: bool,
) -> tuple[Affine, torch.Tensor, torch.Tensor, dict | None]:
    """The fixed -> moving linear map a registration starts from (``specs``, the head centres'
    translation, or with ``axes`` the best principal-axes alignment), the two head centres (world
    mm) and the record of the principal-axes choice (or None), for two working images."""
    heads = head_moments(fixed, fixed_grid), head_moments(moving, moving_grid)
    c_fix, c_mov = head_center(fixed, fixed_grid, heads[0]), head_center(moving, moving_grid, heads[1])
    linear = initial_linear(specs, center_of_mass, c_fix, c_mov)
    alignment = None
    if axes and center_of_mass and not specs:
        linear, alignment = principal_axes(fixed, fixed_grid, moving, moving_grid, linear, heads=heads)
    return linear, c_fix, c_mov, alignment


MIN_OVERLAP = 0.05
"""the share of the fixed head that must land on the moving head under a registration's start."""


def overlap(fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid, linear: Affine) -> float:
    """The share of the fixed working image's foreground that ``linear`` maps onto the moving one's."""
    index = torch.nonzero(foreground(fixed[0, 0]))  # (k, j, i)
    if len(index) == 0:
        return 1.0
    index = index[:: max(1, len(index) // 50_000)].flip(-1).double().cpu().numpy()
    m = linear.homogeneous()[0].detach().double().cpu()
    points = torch.as_tensor(fixed_grid.index_to_world(index), dtype=torch.float64)
    mapped = (points @ m[:3, :3].T + m[:3, 3])[None].to(dtype=moving.dtype, device=moving.device)
    return float((sample(moving, moving_grid, mapped) > FOREGROUND).float().mean())


def check_overlap(
    fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid, linear: Affine, fix: str
) -> float:
    """:func:`overlap`, refused below :data:`MIN_OVERLAP` with one line suggesting ``fix`` (no
    registration can start from images that do not meet: it would write empty images and succeed)."""
    share = overlap(fixed, fixed_grid, moving, moving_grid, linear)
    if share < MIN_OVERLAP:
        raise RegodeError(
            f"the fixed and moving images do not overlap at the start: {100 * share:.1f} % of the fixed head lands "
            f"on the moving head; {fix}"
        )
    return share


START_GAP_MM = 25.0
"""the distance (mm, at the fixed head's centre) between the head-centre start and the headers' beyond
which a model that starts with an affine stage runs it from both (see :func:`header_start`)."""


def header_start(
    fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor, moving_grid: Grid, start: Affine, c_fix: torch.Tensor
) -> tuple[Affine | None, dict]:
    """The headers' start (the identity: the images' own world coordinates) as a second candidate
    beside ``start`` (the head centres' translation, or the principal-axes rotation about them that
    :func:`principal_axes` chose; the ``head_centres`` of the record), where the two put the fixed
    head's centre more than :data:`START_GAP_MM` apart and the headers' start overlaps the heads (at least
    :data:`MIN_OVERLAP`); else None. The head centres assume both images show the same part of the
    head: a slab (a FLAIR without the neck) against a head with its neck, or a head against a
    brain-only template, moves one centre and not the other, while images in one scanner space are
    already close by their headers. Which start is right is judged after the first stage
    (regode.odenet.register). The record: the gap (mm) and the headers' overlap."""
    identity = Affine(torch.eye(3, dtype=torch.float64))
    centre = torch.as_tensor(c_fix, dtype=torch.float64).reshape(1, 1, 3)
    gap = float(torch.linalg.norm(start(centre).detach() - centre))
    record = {"gap_mm": gap}
    if gap <= START_GAP_MM:
        return None, record
    record["header_overlap"] = overlap(fixed, fixed_grid, moving, moving_grid, identity)
    return (identity if record["header_overlap"] >= MIN_OVERLAP else None), record


@torch.no_grad()
def local_fit(
    fixed: torch.Tensor,
    fixed_grid: Grid,
    moving: torch.Tensor,
    moving_grid: Grid,
    transform,
    keep: torch.Tensor | None = None,
) -> float:
    """How well ``transform`` (fixed -> moving) aligns two working images: the squared local
    correlation (5-voxel windows) of the fixed image and the moving image sampled through it, over
    the fixed head (and ``keep``, a mask on the fixed grid). A local linear relation of either sign
    scores high, so it also judges a pair of two contrasts. This judges the candidates of a
    registration that have each been optimised (the starts, after the first stage; the affine
    polish's two similarities), where a similarity's own value would favour its own candidate."""
    inside = foreground(fixed)
    if keep is not None:
        inside &= keep > 0.5
    mapped = transform.map_grid(fixed_grid).to(device=fixed.device, dtype=fixed.dtype)
    return float(local_ncc(sample(moving, moving_grid, mapped), fixed, 5, inside))


def keep_better_start(choice: dict, scores: list[float]) -> int:
    """Which of the two starts judged after the first stage to keep: the index of the higher
    :func:`local_fit` (the head centres' on a tie), recorded in ``choice`` (``header_start``'s record)
    with both scores."""
    chosen = int(scores[1] > scores[0])
    choice.update(
        head_centres_local_ncc=scores[0], headers_local_ncc=scores[1], chosen=("head_centres", "headers")[chosen]
    )
    return chosen
