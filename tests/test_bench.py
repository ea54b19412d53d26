"""Metrics on hand-made volumes with known answers, the motion generator, and `regode bench`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from regode.bench import metrics
from regode.bench.consistency import inverse_consistency
from regode.bench.motion import MotionConfig, inverse_on, sample_motion
from regode.cli import app
from regode.grid import Grid
from regode.io import write_image
from regode.synthetic import phantom_labels, render
from regode.transforms import Compose
from regode.warp import resample


def test_dice_hand_computed():
    a = np.zeros((4, 4, 4), int)
    b = np.zeros((4, 4, 4), int)
    a[0, :2, :2] = 1  # 4 voxels
    b[0, :2, :1] = 1  # 2 voxels, both inside a
    a[1, 0, 0] = 2  # label 2 only in a: skipped
    a[2, :, :] = 3
    b[2, :, :] = 3  # perfect
    per = metrics.dice_per_label(a, b)
    assert per == {1: pytest.approx(200 * 2 / 6), 3: pytest.approx(100.0)}
    assert metrics.mean_dice(a, b) == pytest.approx((200 * 2 / 6 + 100) / 2)
    assert metrics.mean_dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) is None


def test_rmse_hand_computed():
    truth = np.array([0.0, 10.0, 10.0, 10.0]).reshape(1, 1, 4)
    registered = np.array([0.0, 10.0, 5.0, 10.0]).reshape(1, 1, 4)
    mask = np.ones_like(truth, bool)
    # range 0..10 -> [0, 1]; one voxel off by 0.5 of four -> sqrt(0.25 / 4)
    assert metrics.rmse_intensity(registered, truth, mask) == pytest.approx(0.25)
    est = np.zeros((3, 1, 1, 2))
    true = np.zeros((3, 1, 1, 2))
    true[:, 0, 0, 0] = [3.0, 4.0, 0.0]  # 5 mm off at one voxel, 0 at the other
    assert metrics.rmse_displacement(est, true, np.ones((1, 1, 2), bool)) == pytest.approx(np.sqrt(25 / 2))


def test_jacobian_of_a_known_linear_map_on_an_oblique_grid(awkward_grid):
    # u(x) = (A - I) x: det J = det A everywhere, whatever the grid's direction and spacing
    a = np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]])
    pts = awkward_grid.world_points(dtype=torch.float64).numpy()
    disp = np.moveaxis(pts @ (a - np.eye(3)).T, -1, 0)
    det = metrics.jacobian_determinant(disp, awkward_grid)
    np.testing.assert_allclose(det, np.linalg.det(a), rtol=1e-9)
    mask = np.ones(det.shape, bool)
    assert metrics.folding_percent(det, mask) == 0
    assert metrics.sd_log_jacobian(det, mask) == pytest.approx(0, abs=1e-9)
    flipped = np.moveaxis(pts @ (np.diag([-1.0, 1, 1]) - np.eye(3)).T, -1, 0)  # a reflection folds everything
    assert metrics.folding_percent(metrics.jacobian_determinant(flipped, awkward_grid), mask) == 100


def test_hd95_of_a_shifted_cube():
    a = np.zeros((20, 20, 20), int)
    b = np.zeros((20, 20, 20), int)
    a[5:15, 5:15, 5:15] = 1
    b[5:15, 5:15, 7:17] = 1  # shifted by 2 voxels along x (the last array axis)
    assert metrics.hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert metrics.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(4.0)  # x spacing 2 mm
    assert metrics.hd95(a, a, (1.0, 1.0, 1.0)) == 0


def test_rigid_motion_in_range():
    grid = Grid((60, 60, 40), (2.0, 2.0, 2.0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = sample_motion("rigid", grid, rng)
        # rotation angle of R = Rz Rx Ry with every angle within 75 deg, translation within 20 mm
        r = truth.matrix[0].numpy()
        assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1)
        assert np.all(np.abs(truth.translation.numpy()) <= 20)
        ax = np.arcsin(np.clip(r[2, 1], -1, 1))  # ITK Euler ZXY: r[2,1] = sin(ax)
        assert abs(np.rad2deg(ax)) <= 75 + 1e-9
        np.testing.assert_allclose(truth.center[0].numpy(), grid.center)


def test_motion_is_seeded_and_configurable():
    grid = Grid((30, 30, 20), (2.0, 2.0, 2.0))
    a = sample_motion("rigid+deformable", grid, np.random.default_rng(3))
    b = sample_motion("rigid+deformable", grid, np.random.default_rng(3))
    torch.testing.assert_close(a.displacement(grid), b.displacement(grid))
    small = sample_motion("rigid", grid, np.random.default_rng(3), MotionConfig(max_rotation=1.0, max_translation=0.5))
    assert np.all(np.abs(small.translation.numpy()) <= 0.5)


@pytest.mark.parametrize("task", ["rigid", "deformable", "rigid+deformable"])
def test_warping_then_undoing_the_motion_restores_the_image(task):
    grid = Grid((64, 72, 56), (2.0, 2.0, 2.0), (-63.0, -71.0, -55.0))
    labels = phantom_labels(grid, 12, seed=1)
    from scipy.ndimage import gaussian_filter

    # smooth, so that the two linear interpolations of the round trip lose little
    image = torch.as_tensor(gaussian_filter(render(labels, grid, seed=1, noise=0.0).numpy(), (0, 0, 2, 2, 2)))
    truth = sample_motion(task, grid, np.random.default_rng(5), MotionConfig(max_rotation=30, control_spacing=40))
    moving = resample(image, grid, grid, inverse_on(truth, grid))
    restored = resample(moving, grid, grid, truth)[0, 0].numpy()
    # only where truth(x) stays inside the field of view can the round trip restore the image
    index = grid.world_to_index(truth(grid.world_points(dtype=torch.float64)[None])[0].detach().numpy())
    mask = (labels[0, 0] > 0).numpy() & np.all((index > 1) & (index < np.asarray(grid.size) - 2), axis=-1)
    before = np.sqrt(np.mean((moving[0, 0].numpy() - image[0, 0].numpy())[mask] ** 2))
    after = np.sqrt(np.mean((restored - image[0, 0].numpy())[mask] ** 2))
    assert after < 0.1 * before  # only interpolation error is left
    assert after < 0.05


def test_deformable_motion_is_invertible_enough():
    grid = Grid((96, 112, 80), (2.0, 2.0, 2.0))
    dets = []
    for seed in range(5):
        truth = sample_motion("deformable", grid, np.random.default_rng(seed))
        dets.append(metrics.jacobian_determinant(truth.displacement(grid)[0].numpy(), grid))
    assert min(d.min() for d in dets) > 0  # default 40 mm control spacing with sigma 8 mm never folds


@pytest.fixture
def dataset(tmp_path):
    """Two subjects, t1 and t2 renderings of one label map each; labels only when asked."""

    def make(with_labels: bool):
        root = tmp_path / ("labelled" if with_labels else "plain")
        for s in range(2):
            grid = Grid((40, 44, 36), (2.0, 2.0, 2.0), (-39.0 + s, -43.0, -35.0))
            labels = phantom_labels(grid, 6, seed=s)
            (root / f"sub{s}").mkdir(parents=True)
            for c, contrast in enumerate(("t1", "t2")):
                write_image(render(labels, grid, seed=10 * s + c), grid, root / f"sub{s}" / f"{contrast}.nii.gz")
            if with_labels:
                write_image(labels, grid, root / f"sub{s}" / "seg.nii.gz", np.uint8)
        return root

    return make


def test_bench_without_labels_reports_intensity_and_transform_metrics(dataset, tmp_path):
    root = dataset(False)
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data",
            str(root),
            "--task",
            "rigid",
            "--methods",
            "identity",
            "--pairs",
            "2",
            "--resolution",
            "4",
            "-q",
            "--out",
            str(tmp_path / "res"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "res.json").read_text())
    stats = doc["summary"]["identity"]
    assert "dice" not in stats and "hd95" not in stats  # undefined without labels
    assert stats["rmse_phi"]["mean"] > 1 and stats["rmse_x"]["mean"] > 0  # identity leaves the motion
    assert stats["neg_jac_pct"]["mean"] == 0
    assert len(doc["cases"]) == 2 and doc["config"]["pairs"] == 2 and doc["config"]["motion"]["max_rotation"] == 75
    assert (tmp_path / "res.md").read_text().count("| `identity` |") == 1


def test_bench_with_labels_and_inter_subject(dataset, tmp_path):
    root = dataset(True)
    for task in ("deformable", "inter-subject"):
        result = CliRunner().invoke(
            app,
            [
                "bench",
                "--data",
                str(root),
                "--task",
                task,
                "--methods",
                "identity",
                "--pairs",
                "1",
                "--resolution",
                "4",
                "-q",
                "--out",
                str(tmp_path / task),
            ],
        )
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / f"{task}.json").read_text())
        case = doc["cases"][0]
        assert 0 < case["dice"] < 100 and case["hd95"] > 0
        assert (case["rmse_phi"] is None) == (task == "inter-subject")


def test_identity_method_is_exact_on_unmoved_pair(awkward_grid):
    from regode.bench.methods import METHODS
    from regode.bench.run import Case, evaluate
    from regode.io import Image

    labels = phantom_labels(awkward_grid, 8, seed=2)
    img = Image(render(labels, awkward_grid, seed=2), awkward_grid, np.dtype(np.float32))
    zero = np.zeros((3, *awkward_grid.shape))
    case = Case("same", img, img, labels, labels, img.data[0, 0].numpy(), zero)
    row = evaluate(case, METHODS["identity"](), seed=0)
    assert row["dice"] == pytest.approx(100) and row["rmse_phi"] == 0 and row["rmse_x"] == pytest.approx(0, abs=1e-6)
    assert isinstance(Compose([]).displacement(awkward_grid), torch.Tensor)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_memory_is_what_the_method_needed(awkward_grid):
    """memory_mb: the rise of the resident memory while a method ran, not the process's size: a
    method that touches 300 MB reports about that, identity about nothing, in either order."""
    from regode.bench.methods import Identity
    from regode.bench.run import Case, evaluate
    from regode.io import Image

    class Hungry(Identity):
        def register(self, fixed, moving, seed):
            block = np.ones(300 * 2**20 // 8)  # 300 MB, written
            assert block.sum() > 0
            return Compose([])

    labels = phantom_labels(awkward_grid, 8, seed=2)
    img = Image(render(labels, awkward_grid, seed=2), awkward_grid, np.dtype(np.float32))
    case = Case("same", img, img, labels, labels)
    rows = [evaluate(case, method, seed=0) for method in (Hungry(), Identity(), Hungry())]
    assert 280 < rows[0]["memory_mb"] < 340 and 280 < rows[2]["memory_mb"] < 340
    assert rows[1]["memory_mb"] < 30


def test_principal_axes_method_undoes_a_large_rotation():
    """`regode:principal-axes` (register's rigid start alone) through the benchmark's evaluation."""
    from regode.bench.methods import METHODS
    from regode.bench.motion import rigid_about_center
    from regode.bench.run import Case, evaluate
    from regode.io import Image
    from regode.warp import resample

    grid = Grid((56, 64, 52), (3.0, 3.0, 3.0), (-80.0, -95.0, -75.0))
    labels = phantom_labels(grid, 12, seed=4)
    truth = rigid_about_center(np.array([10.0, 95.0, -30.0]), np.array([5.0, -5.0, 8.0]), grid.center)
    fixed = Image(render(labels, grid, seed=1), grid, np.dtype(np.float32))
    moving = Image(resample(render(labels, grid, seed=2), grid, grid, truth.inverse()), grid, np.dtype(np.float32))
    moving_labels = resample(labels.float(), grid, grid, truth.inverse(), "label")
    disp = truth.displacement(grid)[0].numpy()
    case = Case(
        "turned", fixed, moving, labels.float(), moving_labels, render(labels, grid, seed=2)[0, 0].numpy(), disp
    )
    before = evaluate(case, METHODS["identity"](), seed=0)
    after = evaluate(case, METHODS["regode:principal-axes"](), seed=0)
    assert before["rmse_phi"] > 50 and after["rmse_phi"] < 8.0 and after["dice"] > before["dice"] + 30


def test_network_ablation_is_the_start_alone():
    """regode:rigid-polish-only without its polish is exactly the principal-axes start: the
    ablation really removes the network; with the network the result differs."""
    from regode.bench.methods import PrincipalAxes, Regode
    from regode.io import Image
    from regode.transforms import Rigid

    grid = Grid((56, 64, 52), (3.0, 3.0, 3.0), (-80.0, -95.0, -75.0))
    labels = phantom_labels(grid, 12, 4)
    truth = Rigid(
        torch.tensor([[0.1, -0.2, 0.3, 5.0, -4.0, 6.0]], dtype=torch.float64), torch.as_tensor(grid.center)[None]
    )
    fixed = Image(render(labels, grid, 1).float(), grid, np.dtype(np.float32))
    moving = Image(resample(render(labels, grid, 2), grid, grid, truth.inverse()).float(), grid, np.dtype(np.float32))
    pts = torch.as_tensor(grid.center)[None, None] + torch.randn(1, 50, 3, dtype=torch.float64) * 20
    start = PrincipalAxes().register(fixed, moving, 0)(pts)
    blank = Regode("rigid", networks=False, polish=False).register(fixed, moving, 0)[0](pts)
    trained = Regode("rigid", polish=False).register(fixed, moving, 0)[0](pts)
    assert float((blank - start).abs().max()) < 1e-4 and float((trained - start).abs().max()) > 0.1


def test_ants_full_script_anchors_recover_a_known_motion():
    """ants:SyNQuick (antsRegistrationSyNQuick[s], what labs run between subjects) through antspyx;
    its files are read back by regode and undo a known rigid motion to a fraction of a voxel."""
    pytest.importorskip("ants")
    import torch

    from regode.bench.methods import METHODS
    from regode.io import Image
    from regode.rotations import euler_matrix
    from regode.transforms import Affine

    grid = Grid((48, 52, 44), (3.0, 3.0, 3.0), (-72.0, -78.0, -66.0))
    labels = phantom_labels(grid, 10, 4)
    motion = Affine(
        euler_matrix(torch.tensor([[0.1, -0.05, 0.08]], dtype=torch.float64)),
        torch.tensor([[3.0, -2.0, 1.0]], dtype=torch.float64),
        torch.as_tensor(grid.center)[None],
    )
    fixed = Image(render(labels, grid, 1), grid, np.float32)
    moving = Image(resample(render(labels, grid, 1), grid, grid, motion.inverse()), grid, np.float32)
    found, inverse = METHODS["ants:SyNQuick"]().register(fixed, moving, 0)
    with torch.no_grad():
        error = (found.displacement(grid) - motion.displacement(grid))[0].numpy()
    mask = (labels[0, 0] > 0).numpy()
    assert float(np.sqrt((error**2).sum(0)[mask].mean())) < 1.0 and "ants:SyNFull" in METHODS
    # its inverse files, in antsApplyTransforms' order, undo the forward mapping
    assert inverse_consistency(found, inverse, grid, mask)[1] < 0.5


def test_greedy_files_are_read_in_the_right_frame():
    """greedy's RAS matrix and its warp, converted by regode, resample the moving image exactly as
    greedy itself does, on an oblique grid; and the mapping undoes a known motion."""
    pytest.importorskip("picsl_greedy")
    import torch

    from regode.bench.methods import METHODS
    from regode.io import Image
    from regode.rotations import euler_matrix
    from regode.synthetic import random_bspline
    from regode.transforms import Affine

    direction = tuple(euler_matrix(torch.tensor([0.1, 0.2, -0.1], dtype=torch.float64)).numpy().ravel())
    grid = Grid((48, 52, 44), (3.0, 3.0, 3.0), (-72.0, -78.0, -66.0), direction)
    labels = phantom_labels(grid, 10, 4)
    motion = Compose(
        [
            Affine(
                euler_matrix(torch.tensor([[0.1, -0.05, 0.08]], dtype=torch.float64)),
                torch.tensor([[3.0, -2.0, 1.0]], dtype=torch.float64),
                torch.as_tensor(grid.center)[None],
            ),
            random_bspline(grid, 30.0, 2.0, 3),
        ]
    )
    image = render(labels, grid, 1)
    fixed = Image(resample(image, grid, grid, motion), grid, np.float32)  # fixed(x) = image(motion(x))
    moving = Image(image, grid, np.float32)
    found, inverse, resliced = METHODS["greedy"]().run(fixed, moving, reslice=True)
    ours = resample(moving.data, grid, grid, found)
    assert float((ours - resliced).abs().max()) < 1e-4  # greedy's own reslicing, through regode's reading of its files
    with torch.no_grad():
        error = (found.displacement(grid) - motion.displacement(grid))[0].numpy()
    mask = (labels[0, 0] > 0).numpy()
    assert float(np.sqrt((error**2).sum(0)[mask].mean())) < 1.5
    assert inverse_consistency(found, inverse, grid, mask)[1] < 0.5  # greedy's -oinv, then the affine's inverse


def test_inter_subject_on_one_subject_is_a_known_affine_and_deformation(tmp_path):
    """A folder of one subject: the inter-subject task moves its image by a known affine (scales and
    shears too) and deformation, so RMSE(phi) is measured beside Dice."""
    grid = Grid((40, 44, 36), (2.0, 2.0, 2.0), (-39.0, -43.0, -35.0))
    labels = phantom_labels(grid, 6, seed=0)
    (tmp_path / "one" / "sub").mkdir(parents=True)
    write_image(render(labels, grid, seed=1), grid, tmp_path / "one" / "sub" / "t1.nii.gz")
    write_image(labels, grid, tmp_path / "one" / "sub" / "seg.nii.gz", np.uint8)
    truth = sample_motion("inter-subject", grid, np.random.default_rng(0))
    assert abs(float(torch.linalg.det(truth.transforms[0].matrix[0])) - 1) > 0.005  # not a rigid motion
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data",
            str(tmp_path / "one"),
            "--task",
            "inter-subject",
            "--methods",
            "identity",
            "--pairs",
            "1",
            "--resolution",
            "4",
            "-q",
            "--out",
            str(tmp_path / "res"),
        ],
    )
    assert result.exit_code == 0, result.output
    case = json.loads((tmp_path / "res.json").read_text())["cases"][0]
    assert case["rmse_phi"] > 1 and 0 < case["dice"] < 100


def _subjects(root: Path, names: list[str]) -> Path:
    """A dataset of phantoms (t1 and labels) under the given subject names."""
    grid = Grid((24, 28, 22), (4.0, 4.0, 4.0), (-46.0, -54.0, -42.0))
    for seed, name in enumerate(names):
        labels = phantom_labels(grid, 5, seed=seed)
        (root / name).mkdir(parents=True)
        write_image(render(labels, grid, seed=seed), grid, root / name / "t1.nii.gz")
        write_image(labels, grid, root / name / "labels.nii.gz", np.uint8)
    return root


def test_consecutive_pairing_moves_each_subject_to_the_next_in_numeric_order(tmp_path):
    """--pairing consecutive: sub1 -> sub2 -> sub3 -> sub10 (numbers, not letters), every pair with
    its per-label Dice (their mean the pair's Dice) and its inverse consistency; one pair too many
    is one error line."""
    root = _subjects(tmp_path / "data", ["sub10", "sub2", "sub1", "sub3"])
    words = ["bench", "--data", str(root), "--task", "inter-subject", "--pairing", "consecutive", "--methods"]
    words += ["identity", "--resolution", "0", "-q", "--out", str(tmp_path / "res"), "--pairs"]
    result = CliRunner().invoke(app, [*words, "3"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "res.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["00:sub2<-sub1:t1", "01:sub3<-sub2:t1", "02:sub10<-sub3:t1"]
    for case in doc["cases"]:
        per_label = case["dice_per_label"]
        assert set(per_label) <= {"1", "2", "3", "4", "5"} and len(per_label) >= 3
        assert case["dice"] == pytest.approx(np.mean(list(per_label.values())))
        assert case["inverse"] == "exact" and case["ic_p95_mm"] == pytest.approx(0, abs=1e-9)
    assert "consecutive pairs" in (tmp_path / "res.md").read_text()
    result = CliRunner().invoke(app, [*words, "4"])
    assert result.exit_code != 0 and "--pairs 4: 4 subjects make 3 consecutive pairs" in result.output


def test_inverse_consistency_of_a_known_deformation(awkward_grid):
    """A smooth deformation and its fixed-point inverse compose to the identity within hundredths
    of a mm, and ITK's numerical inverse (for methods that write none) nearly as well; a wrong
    inverse (none at all) is off by about the deformation's size."""
    from regode.bench.consistency import inverse_consistency, numerical_inverse
    from regode.synthetic import random_bspline
    from regode.transforms import DisplacementField

    spline = random_bspline(awkward_grid, 30.0, 2.0, 5)
    with torch.no_grad():
        field = DisplacementField(awkward_grid, spline.displacement(awkward_grid).double())
    mask = np.zeros(awkward_grid.shape, dtype=bool)
    mask[4:-4, 4:-4, 4:-4] = True
    exact = inverse_consistency(field, field.inverse(100), awkward_grid, mask)
    itk = inverse_consistency(field, numerical_inverse(field.field[0].numpy(), awkward_grid), awkward_grid, mask)
    wrong = inverse_consistency(field, Compose([]), awkward_grid, mask)
    size = float(field.field.norm(dim=1)[0][torch.from_numpy(mask)].median())
    assert exact[1] < 0.01 and itk[1] < 0.1 and size > 1
    assert wrong[0] == pytest.approx(size, rel=1e-6)


def test_elastix_files_are_read_in_the_right_frame(tmp_path, monkeypatch):
    """elastix's default affine and B-spline maps, its deformation field read back by regode, find
    a known translation on each axis (a frame error would flip or swap them); without an inverse of
    its own, the benchmark's numerical one (ITK) is marked as such and undoes the mapping; nothing
    is left in the working folder."""
    pytest.importorskip("itk")
    monkeypatch.chdir(tmp_path)
    from regode.bench.methods import Elastix
    from regode.bench.run import Case, evaluate
    from regode.io import Image
    from regode.transforms import Affine

    grid = Grid((48, 52, 44), (3.0, 3.0, 3.0), (-72.0, -78.0, -66.0))
    labels = phantom_labels(grid, 10, 4)
    shift = Affine(torch.eye(3, dtype=torch.float64)[None], torch.tensor([[6.0, -4.0, 3.0]], dtype=torch.float64))
    image = render(labels, grid, 1)
    fixed = Image(resample(image, grid, grid, shift), grid, np.float32)  # fixed(x) = image(x + shift)
    moving = Image(image, grid, np.float32)
    elastix = Elastix(iterations=60)  # the default maps with fewer iterations: a quick check of the frame
    found = elastix.register(fixed, moving, 0)
    mask = (labels[0, 0] > 0).numpy()
    with torch.no_grad():
        displacement = found.displacement(grid)[0].numpy()
    assert np.allclose([np.median(displacement[c][mask]) for c in range(3)], [6.0, -4.0, 3.0], atol=1.0)
    fixed_labels = resample(labels.double(), grid, grid, shift, "label")
    row = evaluate(Case("known", fixed, moving, fixed_labels, labels.double()), elastix, 0)
    assert row["inverse"].startswith("numerical") and row["ic_p95_mm"] < 0.5
    assert not list(tmp_path.iterdir())
