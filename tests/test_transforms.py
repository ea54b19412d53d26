import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regode.grid import Grid
from regode.rotations import euler_matrix, rotation_matrix
from regode.sampling import sample
from regode.synthetic import random_bspline
from regode.transforms import Affine, BSpline, Compose, DisplacementField, Rigid, integrate_velocity


def test_rotation_matrix_is_a_rotation_about_its_axis():
    rotvec = torch.tensor([[0.3, -1.1, 0.7]], dtype=torch.float64)
    r = rotation_matrix(rotvec)[0]
    torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64))
    assert torch.det(r) == pytest.approx(1.0)
    torch.testing.assert_close(r @ rotvec[0], rotvec[0])  # the axis is fixed
    angle = torch.arccos((torch.trace(r) - 1) / 2)
    assert angle.item() == pytest.approx(rotvec.norm().item())


def test_euler_matrix_matches_itk_euler3d():
    angles = [0.4, -0.7, 1.1]
    itk = sitk.Euler3DTransform((0, 0, 0), *angles)
    ours = euler_matrix(torch.tensor(angles, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours.ravel(), itk.GetMatrix(), atol=1e-12)


def test_compose_applies_last_first():
    scale = Affine(torch.diag(torch.tensor([2.0, 1.0, 1.0])))
    shift = Affine(torch.eye(3), torch.tensor([10.0, 0.0, 0.0]))
    p = torch.tensor([[[1.0, 0.0, 0.0]]])
    assert Compose([scale, shift])(p)[0, 0, 0].item() == pytest.approx(22.0)  # shift first, as ITK
    assert Compose([shift, scale])(p)[0, 0, 0].item() == pytest.approx(12.0)


def test_linear_inverse_is_exact():
    gen = torch.Generator().manual_seed(0)
    a = Affine(
        torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, generator=gen, dtype=torch.float64),
        torch.randn(3, generator=gen, dtype=torch.float64) * 10,
        torch.tensor([4.0, -3.0, 7.0], dtype=torch.float64),
    )
    r = Rigid(torch.tensor([0.5, -0.2, 0.9, 3.0, -8.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0]))
    p = torch.randn(1, 1000, 3, generator=gen, dtype=torch.float64) * 80
    for t in (a, r, Compose([a, r])):
        torch.testing.assert_close(Compose([t, t.inverse()])(p), p, atol=1e-10, rtol=0)
        torch.testing.assert_close(Compose([t.inverse(), t])(p), p, atol=1e-10, rtol=0)


def test_rigid_is_differentiable_in_its_parameters():
    params = torch.tensor([[0.2, -0.1, 0.3, 1.0, 2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    pts = torch.randn(1, 5, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: Rigid(q, torch.ones(3, dtype=torch.float64))(pts), (params,))
    # near zero rotation the Taylor branch keeps gradients finite and correct
    small = torch.tensor([[1e-6, 0.0, -2e-6, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: Rigid(q)(pts), (small,))


def test_sample_gradients_wrt_points_and_volume():
    grid = Grid((6, 5, 4), (1.0, 1.5, 2.0))
    vol = torch.randn(1, 2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    pts = torch.tensor([[[1.3, 2.2, 3.1], [2.7, 4.1, 1.9]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, p: sample(v, grid, p), (vol, pts))


def test_sample_reproduces_voxel_values_and_pads_outside(awkward_grid):
    vol = torch.arange(awkward_grid.numel, dtype=torch.float64).reshape(1, 1, *awkward_grid.shape)
    index = np.array([[0, 0, 0], [40, 36, 16], [7, 11, 5]])
    pts = torch.as_tensor(awkward_grid.index_to_world(index))[None]
    values = sample(vol, awkward_grid, pts)[0, 0]
    expected = [vol[0, 0, k, j, i].item() for i, j, k in index]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    # half a voxel outside: border value (ITK); further out: padding
    near = torch.as_tensor(awkward_grid.index_to_world(np.array([[-0.4, 0, 0], [-0.6, 0, 0]])))[None]
    out = sample(vol, awkward_grid, near, padding=-5.0)[0, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, -5.0], dtype=torch.float64))


def test_displacement_field_inverse_on_smooth_5mm_field():
    grid = Grid((48, 48, 40), (2.0, 2.0, 2.0), (-47.0, -47.0, -39.0))
    spline = random_bspline(grid, 30.0, 1.0, seed=1)
    field = spline.displacement(grid)
    field = field * (5.0 / field.norm(dim=1).max())  # 5 mm amplitude
    u = DisplacementField(grid, field)
    inv = u.inverse()
    pts = grid.world_points(dtype=torch.float64)[None]
    err = (u(inv(pts)) - pts).norm(dim=-1)
    inner = err[:, 5:-5, 5:-5, 5:-5]  # away from the border, where the inverse leaves the grid
    assert inner.median() < 0.1
    assert err.median() < 0.1


def test_displacement_field_inverse_converges_everywhere():
    """The fixed-point iteration settles at every voxel, border included, so stopping at the
    tolerance gives the same field as running all the iterations."""
    grid = Grid((40, 44, 36), (2.0, 2.0, 2.0), (-39.0, -43.0, -35.0))
    field = random_bspline(grid, 20.0, 3.0, seed=2).displacement(grid).float()
    u = DisplacementField(grid, field)
    assert float(field.abs().max()) > 3.0  # points near the border are carried off the grid
    full, one_more, early = (u.inverse(n, tolerance=t) for n, t in ((30, 0.0), (31, 0.0), (30, 1e-3)))
    assert float((full.field - one_more.field).abs().max()) < 1e-4  # no point still jumps
    assert float((full.field - early.field).abs().max()) < 2e-3


def test_velocity_integration_zero_is_identity_and_reverse_is_the_inverse():
    """The one velocity integrator (regode.transforms.integrate_velocity) on a sampled velocity field."""
    grid = Grid((20, 22, 18), (2.0, 2.0, 2.0))
    pts = grid.world_points(dtype=torch.float64)[None]

    def velocity_of(field):
        sampled = DisplacementField(grid, field)
        return lambda y: sampled(y) - y

    zero = velocity_of(torch.zeros(1, 3, *grid.shape, dtype=torch.float64))
    torch.testing.assert_close(integrate_velocity(zero, pts, 4, "rk4"), pts)
    v = velocity_of(random_bspline(grid, 12.0, 2.0, seed=4).displacement(grid))
    there = integrate_velocity(v, pts, 8, "rk4")
    err = (integrate_velocity(v, there, 8, "rk4", reverse=True) - pts).norm(dim=-1)[:, 3:-3, 3:-3, 3:-3]
    assert err.median() < 0.05 and float((there - pts).norm(dim=-1).max()) > 1.0
    # a constant velocity integrates to a translation by it
    const = torch.zeros(1, 3, *grid.shape, dtype=torch.float64)
    const[:, 0] = 1.5
    inner = pts[:, 5:-5, 5:-5, 5:-5]
    moved = integrate_velocity(velocity_of(const), inner, 3, "euler")
    torch.testing.assert_close(moved - inner, torch.tensor([1.5, 0, 0], dtype=torch.float64).expand_as(moved))


def test_bspline_separable_equals_pointwise(awkward_grid):
    spline = random_bspline(awkward_grid, 10.0, 3.0, seed=2)
    dense = spline.displacement(awkward_grid)  # axes aligned with the control grid: separable path
    pts = awkward_grid.world_points(dtype=torch.float64)[None]
    pointwise = (spline(pts) - pts).movedim(-1, 1)
    torch.testing.assert_close(dense, pointwise, atol=1e-9, rtol=0)
    # a grid with another direction falls back to the pointwise path
    other = Grid((10, 11, 12), (3.0, 3.0, 3.0), (-15.0, 0.0, 0.0))
    pts2 = other.world_points(dtype=torch.float64)[None]
    torch.testing.assert_close(spline.displacement(other), (spline(pts2) - pts2).movedim(-1, 1))


def test_bspline_constant_coefficients_give_a_translation(awkward_grid):
    control = BSpline.control_grid_for(awkward_grid, 8.0)
    coef = torch.zeros(1, 3, *control.shape, dtype=torch.float64)
    coef[:, 1] = -2.0
    disp = BSpline(control, coef).displacement(awkward_grid)
    torch.testing.assert_close(disp[:, 1], torch.full_like(disp[:, 1], -2.0))  # partition of unity
    torch.testing.assert_close(disp[:, 0], torch.zeros_like(disp[:, 0]))


@pytest.mark.parametrize("parallel", [True, False])
def test_field_displacement_on_another_grid(parallel):
    """A field read on a finer grid (as register writes its 1 mm warp): the per-axis path for
    parallel grids and the pointwise path for rotated ones both equal sampling at the voxel centres,
    zero beyond the field's buffer."""
    from regode.rotations import euler_matrix
    from regode.sampling import sample

    direction = tuple(euler_matrix(torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)).numpy().ravel())
    coarse = Grid((20, 18, 16), (2.0, 2.0, 2.0), (-19.0, -17.0, -15.0), direction)
    field = random_bspline(coarse, 10.0, 2.0, seed=5).displacement(coarse)
    target_direction = direction if parallel else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    target = Grid((44, 30, 36), (1.0, 1.3, 1.0), (-24.0, -20.0, -18.0), target_direction)  # overhangs the field
    expected = sample(field, coarse, target.world_points(dtype=torch.float64)[None]).reshape(1, 3, *target.shape)
    found = DisplacementField(coarse, field).displacement(target)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-9)
    assert bool((found == 0).all(1).any()) and bool((found != 0).any())


@pytest.mark.parametrize("oblique", [False, True])
def test_bspline_adjoint_is_the_transpose_of_the_displacement(oblique):
    """<B c, f> = <c, B^T f> on the separable path (parallel grids) and on the pointwise one (a
    grid at an angle to the control grid)."""
    direction = (
        tuple(euler_matrix(torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)).numpy().ravel()) if oblique else None
    )
    control = BSpline.control_grid_for(Grid((20, 18, 16), (2.0, 2.0, 2.0), (-19.0, -17.0, -15.0)), 10.0)
    grid = Grid((20, 18, 16), (2.0, 2.0, 2.0), (-19.0, -17.0, -15.0), *(() if direction is None else (direction,)))
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(2, 3, *control.shape, dtype=torch.float64, generator=gen)
    f = torch.randn(2, 3, *grid.shape, dtype=torch.float64, generator=gen)
    lhs = (BSpline(control, c).displacement(grid) * f).sum()
    rhs = (c * BSpline.adjoint(control, grid, f)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
