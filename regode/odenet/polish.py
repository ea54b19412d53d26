"""The polish: a short per-pair optimisation (regode.fitting) after each of ``regode register``'s
networks.

The principal-axes start (regode.alignment) and the rigid network bring a pair into mutual
information's basin (docs/results.md measured it at least 120° and 60 mm wide on BraTS, T1
against FLAIR or T2); the B-spline network moves control points in the direction of the MI force.
Neither, trained on synthetic heads on a CPU, lands on the basin's floor. A few dozen Adam steps
do: on a rigid (or affine) correction composed onto the linear result (:func:`polish_rigid`,
:func:`polish_affine`), on the B-spline's
control points (:func:`polish_bspline`), or on a B-spline correction of the dense network's field
(:func:`polish_dense`), maximising Mattes mutual information on lattices of the fixed head's
bounding box. Each takes its kind's :class:`~regode.odenet.registry.Schedule` (saved with the run).
Deterministic for a seed (the lattices' random offsets come from it).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import fitting
from ..alignment import local_fit
from ..lattice import downsize, region_of
from ..transforms import Affine, BSpline, Compose, DisplacementField, Rigid
from .registry import KINDS, PolishLevel, Schedule


def _stages(
    fixed: list, moving: list, levels: tuple[PolishLevel, ...], linear: Affine, masks=(None, None)
) -> list[fitting.Stage]:
    """The fit's stages on pyramids (lists of regode.odenet.model.Level, coarse to fine): per level
    the fixed and moving images, lattices over the fixed head's bounding box on that level, and the
    moving grid pulled back through ``linear`` (the start), so that sampling it at world points
    ``y`` samples the moving image at ``linear(y)``."""
    matrix = linear.homogeneous()[0].detach().double().cpu().numpy()
    stages = []
    for level in levels:
        if level.coarseness >= min(len(fixed), len(moving)):
            raise ValueError(
                f"the pyramids have {min(len(fixed), len(moving))} levels; the polish needs {level.coarseness + 1}"
            )
        fix, mov = fixed[-1 - level.coarseness], moving[-1 - level.coarseness]
        fixed_mask, moving_mask = (None if m is None else m[-1 - level.coarseness] for m in masks)
        region = region_of(fix.volume if fixed_mask is None else fix.volume * fixed_mask, fix.grid, margin=0.0)

        def lattice(gen, region=region, stride=level.stride, like=fix.volume):
            return downsize(region, stride, gen).to(like.device, like.dtype)  # noqa: E731

        stages.append(
            fitting.Stage(
                name=f"{level.coarseness}:{level.stride}",
                fixed=fix.volume,
                fixed_grid=fix.grid,
                moving=mov.volume,
                moving_grid=mov.grid.pulled_back(matrix),
                lattice=lattice,
                iterations=level.iterations,
                decay=True,
                fixed_mask=fixed_mask,
                moving_mask=moving_mask,
            )  # fmt: skip
        )
    return stages


def polish_rigid(
    fixed: list,
    moving: list,
    linear: Affine,
    center: torch.Tensor,
    schedule: Schedule = KINDS["rigid"].polish,
    seed: int = 0,
    masks=(None, None),
) -> tuple[Affine, dict]:
    """``linear`` (fixed -> moving) composed with the rigid map about ``center`` (world mm) that
    maximises the mutual information of two images given as pyramids (values in [0, 1]); and a
    record (the correction's parameters and the losses of each level)."""
    device, dtype = fixed[-1].volume.device, fixed[-1].volume.dtype
    c = torch.as_tensor(center, dtype=dtype, device=device).reshape(1, 3)
    correction = Rigid(nn.Parameter(torch.zeros(1, 6, dtype=dtype, device=device)), c)
    # every unknown moves about one step per Adam step: angle_step rad, step mm
    units = torch.tensor([schedule.angle_step] * 3 + [schedule.step] * 3, dtype=dtype, device=device)
    fit = fitting.Fit(correction, fitting.Objective("mi"), lr=1.0, scales=[units])
    record = fitting.run(
        fit, _stages(fixed, moving, schedule.levels, linear, masks), torch.Generator().manual_seed(seed)
    )
    params = correction.params.detach().double().cpu()
    record["correction"] = params[0].tolist()
    return Compose([linear, Rigid(params, c.double().cpu())]).as_affine(), record


def polish_affine(
    fixed: list,
    moving: list,
    linear: Affine,
    center: torch.Tensor,
    schedule: Schedule = KINDS["affine"].polish,
    seed: int = 0,
    masks=(None, None),
    metric: str = "mi",
) -> tuple[Affine, dict]:
    """As :func:`polish_rigid`, with an affine correction (12 unknowns: the matrix entries move
    ``schedule.angle_step`` per Adam step, the translation ``schedule.step`` mm) on the levels of
    ``schedule``, maximising ``metric`` (mutual information, or local NCC)."""
    device, dtype = fixed[-1].volume.device, fixed[-1].volume.dtype
    c = torch.as_tensor(center, dtype=dtype, device=device).reshape(1, 3)
    correction = Affine(
        nn.Parameter(torch.eye(3, dtype=dtype, device=device)[None]),
        nn.Parameter(torch.zeros(1, 3, dtype=dtype, device=device)),
        c,
    )
    fit = fitting.Fit(correction, fitting.Objective(metric), lr=1.0, scales=[schedule.angle_step, schedule.step])
    record = fitting.run(
        fit, _stages(fixed, moving, schedule.levels, linear, masks), torch.Generator().manual_seed(seed)
    )
    matrix, shift = correction.matrix.detach().double().cpu(), correction.translation.detach().double().cpu()
    record["correction"] = {"matrix": matrix[0].tolist(), "translation": shift[0].tolist()}
    return Compose([linear, Affine(matrix, shift, c.double().cpu())]).as_affine(), record


def polish_affine_chosen(
    fixed: list,
    moving: list,
    linear: Affine,
    center: torch.Tensor,
    schedule: Schedule = KINDS["affine"].polish,
    seed: int = 0,
    masks=(None, None),
) -> tuple[Affine, dict]:
    """The affine polish with mutual information and (``schedule.ncc_candidate``) with local
    NCC, keeping the result whose local NCC over the fixed head (or mask) on the finest level is
    higher (squared local correlation: a local linear relation of either sign, so it also judges a
    pair of two contrasts). Between whole heads neither similarity is right for every pair
    (docs/results.md, "Inter-subject")."""
    result, record = polish_affine(fixed, moving, linear, center, schedule, seed, masks)
    if not schedule.ncc_candidate:
        return result, record
    other, other_record = polish_affine(fixed, moving, linear, center, schedule, seed, masks, metric="ncc")
    choice = {
        "mi_local_ncc": head_local_ncc(fixed, moving, result, masks),
        "ncc_local_ncc": head_local_ncc(fixed, moving, other, masks),
        "chosen": "mi",
    }
    if choice["ncc_local_ncc"] > choice["mi_local_ncc"]:
        result, record, choice["chosen"] = other, other_record, "ncc"
    record["similarity_choice"] = choice
    return result, record


def head_local_ncc(fixed: list, moving: list, transform, masks=(None, None)) -> float:
    """:func:`regode.alignment.local_fit` on the pyramids' finest level (inside the fixed mask there)."""
    fix, mov = fixed[-1], moving[-1]
    keep = None if masks[0] is None else masks[0][-1]
    return local_fit(fix.volume, fix.grid, mov.volume, mov.grid, transform, keep)


def polish_bspline(
    fixed: list,
    moving: list,
    linear: Affine,
    bspline: BSpline,
    schedule: Schedule = KINDS["bspline"].polish,
    seed: int = 0,
    base: DisplacementField | None = None,
    masks=(None, None),
    metric: str = "mi",
) -> tuple[BSpline, dict]:
    """The control-point displacements of ``bspline`` (applied to fixed points before ``linear``)
    optimised for the mutual information of two images given as pyramids, with fit-field's folding
    penalty and smoothness term on the mapping's Jacobian; and a record. With ``base``, the mapping
    is ``linear(x + base(x) + bspline(x))``: the B-spline is a correction of a fixed displacement
    field (:func:`polish_dense`), and the smoothness term is the correction's. ``metric``: the
    similarity (regode.fitting); ``schedule``: the levels, Adam's step (mm) and the penalties."""
    device, dtype = fixed[-1].volume.device, fixed[-1].volume.dtype
    start = bspline.coefficients.detach()
    current = BSpline(bspline.control_grid, nn.Parameter(start.to(device=device, dtype=dtype).clone()))
    objective = fitting.Objective(metric, lambda_fold=schedule.lambda_fold, lambda_grad=schedule.lambda_grad)
    step = schedule.step
    fit = fitting.Fit(current, objective, lr=step, base=base)
    stages = _stages(fixed, moving, schedule.levels, linear, masks)
    record = fitting.run(fit, stages, torch.Generator().manual_seed(seed))
    record["step_mm"] = step
    coefficients = current.coefficients.detach().to(start.dtype).cpu()
    record["largest_change_mm"] = float((coefficients - start.cpu()).norm(dim=1).max())
    return BSpline(bspline.control_grid, coefficients), record


def polish_dense(
    fixed: list,
    moving: list,
    linear: Affine,
    field: DisplacementField,
    schedule: Schedule = KINDS["dense"].polish,
    seed: int = 0,
    masks=(None, None),
    metric: str = "mi",
) -> tuple[DisplacementField, dict]:
    """The dense network's displacement ``field`` (fixed points, before ``linear``) plus a smooth
    correction, a B-spline of ``schedule.control_spacing`` mm optimised as in :func:`polish_bspline`
    (the dense kind's schedule, or the fine level's); the result is a displacement field on
    ``field``'s grid, and a record."""
    dtype, device = field.field.dtype, field.field.device
    grid = BSpline.control_grid_for(field.grid, schedule.control_spacing)
    zero = BSpline(grid, torch.zeros(1, 3, *grid.shape, dtype=dtype, device=device))
    correction, record = polish_bspline(
        fixed, moving, linear, zero, schedule, seed, base=field, masks=masks, metric=metric
    )
    with torch.no_grad():
        total = field.field + correction.displacement(field.grid).to(dtype)
    return DisplacementField(field.grid, total), record
