import numpy as np
import SimpleITK as sitk
import torch

from regode.grid import Grid


def _sitk_image(grid: Grid) -> sitk.Image:
    return grid.apply_to(sitk.Image(list(grid.size), sitk.sitkFloat32))


def test_index_to_world_matches_sitk(awkward_grid):
    img = _sitk_image(awkward_grid)
    rng = np.random.default_rng(0)
    index = rng.uniform(-2, 40, size=(50, 3))
    ours = awkward_grid.index_to_world(index)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(awkward_grid.world_to_index(ours), index, atol=1e-9)


def test_world_points_layout(awkward_grid):
    pts = awkward_grid.world_points(dtype=torch.float64)
    assert pts.shape == (17, 37, 41, 3)  # [nz, ny, nx, xyz]
    img = _sitk_image(awkward_grid)
    for i, j, k in [(0, 0, 0), (40, 0, 0), (3, 36, 2), (40, 36, 16)]:
        np.testing.assert_allclose(pts[k, j, i].numpy(), img.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-9)


def test_normalised_frame_corners(awkward_grid):
    m = awkward_grid.matrix("index", "normalised")
    first = m @ np.array([0, 0, 0, 1.0])
    last = m @ np.array([40, 36, 16, 1.0])
    np.testing.assert_allclose(first[:3], -1)
    np.testing.assert_allclose(last[:3], 1)
    # frames compose: world -> normalised -> index equals world -> index
    np.testing.assert_allclose(
        awkward_grid.matrix("normalised", "index") @ awkward_grid.matrix("world", "normalised"),
        awkward_grid.matrix("world", "index"),
        atol=1e-12,
    )


def test_with_spacing_keeps_centre_and_extent(awkward_grid):
    coarse = awkward_grid.with_spacing(2.0)
    np.testing.assert_allclose(coarse.center, awkward_grid.center, atol=1e-9)
    assert coarse.spacing == (2.0, 2.0, 2.0)
    assert coarse.direction == awkward_grid.direction
    assert coarse.size == (18, 20, 21)  # round(41*0.9/2), round(37*1.1/2), round(17*2.5/2)


def test_an_axis_of_one_voxel_is_inside_for_half_a_voxel_either_side():
    """A single slice (nz = 1) of 2 mm: points within 1 mm of its plane take its values, points
    further out the padding, on either side (the buffer is [-0.5, 0.5] in index, as on every axis)."""
    from regode.sampling import sample, sample_on_grid

    grid = Grid((4, 3, 1), (1.0, 1.0, 2.0), (0.0, 0.0, 10.0))
    volume = torch.arange(1.0, 13.0).reshape(1, 1, 1, 3, 4)
    z = torch.tensor([8.5, 9.2, 10.0, 10.8, 11.5])  # index -0.75, -0.4, 0, 0.4, 0.75 along k
    points = torch.stack([torch.full_like(z, 2.0), torch.full_like(z, 1.0), z], -1)[None]
    values = sample(volume, grid, points)[0, 0]
    assert values.tolist() == [0.0, 7.0, 7.0, 7.0, 0.0]
    above = Grid((4, 3, 1), (1.0, 1.0, 2.0), (0.0, 0.0, 11.5))  # the same slice 0.75 voxel higher
    near = Grid((4, 3, 1), (1.0, 1.0, 2.0), (0.0, 0.0, 10.8))
    assert float(sample_on_grid(volume, grid, above).abs().max()) == 0.0
    torch.testing.assert_close(sample_on_grid(volume, grid, near), volume)


def test_frame_matrices_are_cached_but_a_caller_cannot_change_them():
    """Grid.matrix computes each grid's matrices once; what it returns is the caller's own copy, so
    writing into it (or into a tensor sharing its memory) leaves the next call's answer alone."""
    grid = Grid((5, 6, 7), (1.0, 2.0, 3.0), (1.0, -2.0, 4.0))
    first = grid.matrix("world", "index")
    expected = first.copy()
    first[:] = 0.0
    torch.as_tensor(grid.matrix("world", "index"))[0, 0] = 99.0  # shares the returned array's memory
    np.testing.assert_array_equal(grid.matrix("world", "index"), expected)
    assert grid.matrix("world", "index") is not grid.matrix("world", "index")
