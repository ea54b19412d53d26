"""Transform files regode writes are read by SimpleITK (and antspyx) to the same mapping, and
files SimpleITK writes are read by regode to the same mapping."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regode.errors import RegodeError
from regode.io import load_transform, parse_transform_spec, read_image, save_transform, write_image
from regode.synthetic import random_bspline
from regode.transforms import Affine, Compose, DisplacementField, Rigid

from .conftest import random_world_points

TOL_MM = 1e-4


def random_rigid(seed: int) -> Rigid:
    rng = np.random.default_rng(seed)
    params = np.concatenate([rng.uniform(-1.2, 1.2, 3), rng.uniform(-30, 30, 3)])
    return Rigid(torch.as_tensor(params), torch.as_tensor(rng.uniform(-20, 20, 3)))


def random_affine(seed: int) -> Affine:
    rng = np.random.default_rng(seed)
    matrix = np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3))
    return Affine(
        torch.as_tensor(matrix), torch.as_tensor(rng.uniform(-30, 30, 3)), torch.as_tensor(rng.uniform(-20, 20, 3))
    )


def random_field(grid, seed: int) -> DisplacementField:
    return DisplacementField(grid, random_bspline(grid, 12.0, 3.0, seed).displacement(grid))


def sitk_map(tx: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([tx.TransformPoint(tuple(p)) for p in points])


def regode_map(t, points: np.ndarray) -> np.ndarray:
    return t(torch.as_tensor(points)[None])[0].detach().numpy()


@pytest.mark.parametrize("ext", [".mat", ".txt", ".tfm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_round_trip_with_sitk(tmp_path, awkward_grid, ext, seed):
    points = random_world_points(awkward_grid, 1000, seed, margin=-5)
    for t in (random_rigid(seed), random_affine(seed)):
        path = tmp_path / f"t{ext}"
        save_transform(t, path)
        expected = regode_map(t, points)
        np.testing.assert_allclose(sitk_map(sitk.ReadTransform(str(path)), points), expected, atol=TOL_MM)
        np.testing.assert_allclose(regode_map(load_transform(path), points), expected, atol=TOL_MM)
        # the inverse, as [file,1]
        inv = load_transform(*parse_transform_spec(f"[{path},1]"))
        np.testing.assert_allclose(regode_map(inv, expected), points, atol=TOL_MM)


def test_mat_is_ants_generic_affine(tmp_path):
    save_transform(random_affine(0), tmp_path / "0GenericAffine.mat")
    tx = sitk.ReadTransform(str(tmp_path / "0GenericAffine.mat"))
    assert tx.GetName() == "AffineTransform"


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_displacement_field_round_trip_with_sitk(tmp_path, awkward_grid, ext):
    field = random_field(awkward_grid, 7)
    path = tmp_path / f"1Warp{ext}"
    save_transform(field, path)
    img = sitk.ReadImage(str(path))
    assert img.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_allclose(img.GetDirection(), awkward_grid.direction, atol=1e-6)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(img, sitk.sitkVectorFloat64))
    points = random_world_points(awkward_grid, 1000, 1)
    expected = regode_map(field, points)
    np.testing.assert_allclose(sitk_map(tx, points), expected, atol=TOL_MM)
    np.testing.assert_allclose(regode_map(load_transform(path), points), expected, atol=TOL_MM)


def test_warp_nifti_is_an_ants_vector_image(tmp_path, awkward_grid):
    import nibabel as nib

    save_transform(random_field(awkward_grid, 1), tmp_path / "1Warp.nii.gz")
    nii = nib.load(tmp_path / "1Warp.nii.gz")
    assert nii.shape == (*awkward_grid.size, 1, 3)  # x, y, z, t, vector
    assert int(nii.header["intent_code"]) == 1007  # NIFTI_INTENT_VECTOR


def test_composite_h5_round_trip_with_sitk(tmp_path, awkward_grid):
    chain = Compose([random_field(awkward_grid, 3), random_affine(3)])
    save_transform(chain, tmp_path / "composite.h5")
    tx = sitk.ReadTransform(str(tmp_path / "composite.h5"))
    points = random_world_points(awkward_grid, 1000, 2)
    expected = regode_map(chain, points)
    np.testing.assert_allclose(sitk_map(tx, points), expected, atol=TOL_MM)
    np.testing.assert_allclose(regode_map(load_transform(tmp_path / "composite.h5"), points), expected, atol=TOL_MM)


def test_reads_sitk_written_transforms(tmp_path, awkward_grid):
    points = random_world_points(awkward_grid, 1000, 4, margin=-5)
    euler = sitk.Euler3DTransform((3.0, -2.0, 10.0), 0.3, -0.5, 0.9, (4.0, 5.0, -6.0))
    similarity = sitk.Similarity3DTransform(1.1, (0.2, 0.3, -0.1), 0.4, (1.0, 2.0, 3.0), (5.0, 0.0, 0.0))
    translation = sitk.TranslationTransform(3, (1.5, -2.5, 3.5))
    composite = sitk.CompositeTransform([euler, translation])
    for name, tx in [("e.txt", euler), ("s.tfm", similarity), ("t.mat", translation), ("c.h5", composite)]:
        sitk.WriteTransform(tx, str(tmp_path / name))
        np.testing.assert_allclose(
            regode_map(load_transform(tmp_path / name), points), sitk_map(tx, points), atol=TOL_MM
        )


def test_ants_reads_regode_files(tmp_path, awkward_grid):
    ants = pytest.importorskip("ants")
    affine = random_affine(5)
    save_transform(affine, tmp_path / "0GenericAffine.mat")
    tx = ants.read_transform(str(tmp_path / "0GenericAffine.mat"))
    points = random_world_points(awkward_grid, 50, 3)
    theirs = np.array([tx.apply_to_point(tuple(p)) for p in points])
    np.testing.assert_allclose(theirs, regode_map(affine, points), atol=TOL_MM)
    field = random_field(awkward_grid, 8)
    save_transform(field, tmp_path / "1Warp.nii.gz")
    warp = ants.transform_from_displacement_field(ants.image_read(str(tmp_path / "1Warp.nii.gz")))
    theirs = np.array([warp.apply_to_point(tuple(p)) for p in points])
    np.testing.assert_allclose(theirs, regode_map(field, points), atol=TOL_MM)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_image_round_trip_keeps_geometry_and_type(tmp_path, awkward_grid, phantom, ext):
    _, labels = phantom
    path = tmp_path / f"labels{ext}"
    write_image(labels, awkward_grid, path, np.int16)
    image = read_image(path)
    assert image.grid.same_as(awkward_grid, tol=1e-5)
    assert image.dtype == np.int16
    assert torch.equal(image.data.to(torch.int32), labels)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_bad_transform_files(tmp_path):
    (tmp_path / "x.xyz").write_text("nothing")
    with pytest.raises(RegodeError, match="unsupported transform file"):
        load_transform(tmp_path / "x.xyz")
    (tmp_path / "broken.mat").write_bytes(b"\x00garbage")
    with pytest.raises(RegodeError, match="cannot read transform"):
        load_transform(tmp_path / "broken.mat")
    with pytest.raises(RegodeError, match="not found"):
        load_transform(tmp_path / "missing.mat")
    with pytest.raises(RegodeError, match="form"):
        parse_transform_spec("[a.mat,2]")
    bspline = sitk.BSplineTransform(3)
    sitk.WriteTransform(bspline, str(tmp_path / "bspline.tfm"))
    with pytest.raises(RegodeError, match="unsupported transform kind"):
        load_transform(tmp_path / "bspline.tfm")


def test_vector_fields_are_gzip_files_that_every_reader_takes(tmp_path, awkward_grid):
    """Displacement fields go into .nii.gz as stored (level-0) gzip: still gzip, same values for
    SimpleITK and for regode, and the same bytes on every write (no time stamp)."""
    import gzip

    grid = awkward_grid
    field = torch.randn(1, 3, *grid.shape, dtype=torch.float64)
    for name in ("a.nii.gz", "b.nii.gz"):
        save_transform(DisplacementField(grid, field), tmp_path / name)
    raw = (tmp_path / "a.nii.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw == (tmp_path / "b.nii.gz").read_bytes()
    assert len(gzip.decompress(raw)) > field.numel() * 4
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")))  # [z, y, x, 3]
    np.testing.assert_allclose(back, field[0].permute(1, 2, 3, 0).numpy(), atol=1e-6)
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("a.nii.gz", "b.nii.gz")]


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    """Files written through StagedOutputs appear only at commit; a failing write (here the second)
    leaves none of them, nor the private folder; a file outside the folder is refused."""
    from regode.io.atomic import StagedOutputs

    def text(path, value):
        Path(path).write_text(value)

    def broken(path):
        Path(path).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with StagedOutputs(tmp_path) as staged:
            staged.write(tmp_path / "a.txt", text, "a")
            staged.write(tmp_path / "b.txt", broken)
            staged.write(tmp_path / "c.txt", text, "c")
            staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with StagedOutputs(tmp_path) as staged:
        staged.write(tmp_path / "a.txt", text, "a")
        staged.write(tmp_path / "c.txt", text, "c")
        assert not (tmp_path / "a.txt").exists()
        (tmp_path / "sub").mkdir()
        with pytest.raises(ValueError):
            staged.write(tmp_path / "sub" / "d.txt", text, "d")
        staged.commit()
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt", "sub"]
        and (tmp_path / "c.txt").read_text() == "c"
    )
