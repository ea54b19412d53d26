"""The polish: a short per-pair optimisation after each of ``regode register``'s networks.

The principal-axes start (regode.alignment) and the rigid network bring a pair into mutual
information's basin (docs/benchmarks.md measured it at least 120° and 60 mm wide on BraTS, T1
against FLAIR or T2); the B-spline network moves control points in the direction of the MI force.
Neither, trained on synthetic heads on a CPU, lands on the basin's floor. A few dozen Adam steps
do: on a rigid correction composed onto the rigid result (:func:`polish_rigid`), then on the
B-spline's control points (:func:`polish_bspline`), or on a B-spline correction of the dense
network's field (:func:`polish_dense`), maximising Mattes mutual information on lattices of the
fixed head's bounding box. Deterministic for a seed (the lattices' random offsets come from it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import mattes_mutual_information
from .optim import Adam
from .sampling import sample
from .transforms import Affine, BSpline, Compose, DisplacementField, Rigid


@dataclass(frozen=True)
class PolishLevel:
    """One level of a polish: how many Adam steps, on which pyramid level, on how coarse a lattice."""

    coarseness: int
    """the image pyramid level (regode.odenet.model.pyramid) it runs on: 0 is the working grid,
    each next one has twice the spacing and is smoothed to match."""
    stride: int
    """the lattice step, in voxels of that level."""
    iterations: int


LEVELS = (PolishLevel(1, 2, 40), PolishLevel(0, 3, 20))
"""on the 2 mm working grid: 40 steps on an 8 mm lattice of the 4 mm images, then 20 on a 6 mm
lattice of the 2 mm images. On BraTS (10 pairs per task) this measured the same as the earlier 4 mm
lattice (rigid task: Dice 92.6 against 92.7, RMSE(phi) 0.50 mm for both; rigid+deformable: 76.1 /
2.78 mm against 75.8 / 2.83 mm) at a third of the finest level's cost. Ten steps instead of 20
measured as well on BraTS but stopped 1.5–2 mm short on the phantom of tests/test_alignment.py."""
ROTATION_STEP = 0.01
"""Adam's step for the rotation vector (radians: about 0.6° per step at the start)."""
TRANSLATION_STEP = 0.5
"""Adam's step for the translation (mm)."""


def polish_rigid(fixed: list, moving: list, linear: Affine, center: torch.Tensor, levels=LEVELS,
                 seed: int = 0) -> tuple[Affine, dict]:
    """``linear`` (fixed -> moving) composed with the rigid map about ``center`` (world mm) that
    maximises the mutual information of two images, given as their pyramids (lists of
    :class:`regode.odenet.model.Level`, coarse to fine, values in [0, 1]); and a record (the
    correction's parameters and the MI at each level's first and last step)."""
    from .nir.samplers import downsize

    generator = torch.Generator().manual_seed(seed)
    device, dtype = fixed[-1].volume.device, fixed[-1].volume.dtype
    matrix = linear.homogeneous()[0].detach().double().cpu().numpy()
    c = torch.as_tensor(center, dtype=dtype, device=device).reshape(1, 3)
    # Adam moves every unknown about one unit per step: units of ROTATION_STEP rad and TRANSLATION_STEP mm
    units = torch.tensor([ROTATION_STEP] * 3 + [TRANSLATION_STEP] * 3, dtype=dtype, device=device)
    unknowns = torch.zeros(1, 6, dtype=dtype, device=device, requires_grad=True)
    adam = Adam([unknowns])
    record = {"levels": [], "iterations": 0}
    for level in levels:
        fix, mov, region, moving_at = _level(fixed, moving, level, matrix)
        values = []
        for it in range(level.iterations):
            points = downsize(region, level.stride, generator).points.to(device=device, dtype=dtype)
            moved = Rigid(unknowns * units, c)(points)
            mi = mattes_mutual_information(sample(mov.volume, moving_at, moved), sample(fix.volume, fix.grid, points))
            (-mi).backward()
            adam.step(_decay(it, level.iterations))
            values.append(float(mi.detach()))
        _log(record, level, values)
    params = (unknowns * units).detach().double().cpu()
    correction = Rigid(params, c.double().cpu())
    record["correction"] = params[0].tolist()
    return Compose([linear, correction]).as_affine(), record


BSPLINE_LEVELS = (PolishLevel(0, 3, 40),)
"""the B-spline polish: 40 steps on a 6 mm lattice of the 2 mm working images."""
BSPLINE_STEP = 0.3
"""Adam's step for the control-point displacements (mm)."""
LAMBDA_FOLD, LAMBDA_GRAD = 10.0, 5.0
"""the folding penalty and the weight of ``||J - I||^2`` (regode fit-field's defaults)."""


def polish_bspline(fixed: list, moving: list, linear: Affine, bspline: BSpline, levels=BSPLINE_LEVELS,
                   seed: int = 0, base: DisplacementField | None = None) -> tuple[BSpline, dict]:
    """The control-point displacements of ``bspline`` (applied to fixed points before ``linear``)
    optimised for the mutual information of two images given as pyramids (see :func:`polish_rigid`),
    with fit-field's folding penalty and smoothness term on the mapping's Jacobian; and a record.
    With ``base``, the mapping is ``linear(x + base(x) + bspline(x))``: the B-spline is a correction
    of a fixed displacement field (:func:`polish_dense`), and the smoothness term is the correction's."""
    from .losses import folding_penalty, jacobian_energy, lattice_jacobian
    from .nir.samplers import downsize_grid, lattice_step

    generator = torch.Generator().manual_seed(seed)
    device, dtype = fixed[-1].volume.device, fixed[-1].volume.dtype
    matrix = linear.homogeneous()[0].detach().double().cpu().numpy()
    start = bspline.coefficients.detach().to(device=device, dtype=dtype)
    change = torch.zeros_like(start, requires_grad=True)  # in units of BSPLINE_STEP mm
    adam = Adam([change])
    record = {"levels": [], "iterations": 0}
    for level in levels:
        fix, mov, region, moving_at = _level(fixed, moving, level, matrix)
        step = lattice_step(region, level.stride).to(device=device, dtype=dtype)
        values = []
        for it in range(level.iterations):
            lattice = downsize_grid(region, level.stride, generator)
            points = lattice.world_points(dtype, device)[None]
            current = BSpline(bspline.control_grid, start + BSPLINE_STEP * change)
            mapped = points + current.displacement(lattice).movedim(1, -1)  # separable: lattice and control grid are parallel
            smoothness = jacobian = lattice_jacobian(mapped, step)
            if base is not None:  # the smoothness term is the correction's; no folding of the whole mapping
                mapped = mapped + base.displacement(lattice).detach().to(dtype).movedim(1, -1)
                jacobian = lattice_jacobian(mapped, step)
            mi = mattes_mutual_information(sample(mov.volume, moving_at, mapped), sample(fix.volume, fix.grid, points))
            loss = -mi + LAMBDA_FOLD * folding_penalty(jacobian) + LAMBDA_GRAD * jacobian_energy(smoothness)
            loss.backward()
            adam.step(_decay(it, level.iterations))
            values.append(float(mi.detach()))
        _log(record, level, values)
    coefficients = (start + BSPLINE_STEP * change).detach().to(bspline.coefficients.dtype).cpu()
    record["largest_change_mm"] = float((coefficients - bspline.coefficients.cpu()).norm(dim=1).max())
    return BSpline(bspline.control_grid, coefficients), record


DENSE_CONTROL_SPACING = 10.0
"""the dense polish's correction: a B-spline with half the B-spline model's control spacing (mm)."""


def polish_dense(fixed: list, moving: list, linear: Affine, field: DisplacementField, levels=BSPLINE_LEVELS,
                 seed: int = 0, control_spacing: float = DENSE_CONTROL_SPACING) -> tuple[DisplacementField, dict]:
    """The dense network's displacement ``field`` (fixed points, before ``linear``) plus a smooth
    correction, a B-spline of ``control_spacing`` mm optimised as in :func:`polish_bspline`; the
    result is a displacement field on ``field``'s grid, and a record."""
    dtype, device = field.field.dtype, field.field.device
    grid = BSpline.control_grid_for(field.grid, control_spacing)
    zero = BSpline(grid, torch.zeros(1, 3, *grid.shape, dtype=dtype, device=device))
    correction, record = polish_bspline(fixed, moving, linear, zero, levels, seed, base=field)
    with torch.no_grad():
        total = field.field + correction.displacement(field.grid).to(dtype)
    return DisplacementField(field.grid, total), record


def _level(fixed: list, moving: list, level: PolishLevel, matrix):
    """The fixed and moving pyramid levels a polish level runs on, the fixed head's bounding box
    on that level (where the lattices lie) and the moving grid pulled back through ``matrix`` (the
    4x4 world -> world start): sampling it at world points ``y`` samples the moving image at
    ``matrix @ y``."""
    from .nir.samplers import region_of

    if level.coarseness >= min(len(fixed), len(moving)):
        raise ValueError(f"the pyramids have {min(len(fixed), len(moving))} levels; the polish needs {level.coarseness + 1}")
    fix, mov = fixed[-1 - level.coarseness], moving[-1 - level.coarseness]
    return fix, mov, region_of(fix.volume, fix.grid, margin=0.0), mov.grid.pulled_back(matrix)


def _decay(it: int, iterations: int) -> float:
    """Adam's step factor at step ``it`` of a level: 1, decaying linearly to a tenth."""
    return 1.0 - 0.9 * it / max(1, iterations - 1)


def _log(record: dict, level: PolishLevel, values: list[float]) -> None:
    record["levels"].append({"coarseness": level.coarseness, "stride": level.stride, "iterations": level.iterations,
                             "mi_first": values[0], "mi_last": values[-1]})
    record["iterations"] += level.iterations
