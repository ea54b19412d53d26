"""MS-ODENet: solvers, parameterisations, checkpoints, training, registration and bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from regode import checkpoint
from regode.cli import app
from regode.errors import RegodeError
from regode.grid import Grid
from regode.io import load_transform, read_image, write_image
from regode.odenet.config import ModelConfig, MotionRange, TrainConfig, parse_schedule
from regode.odenet.data import SyntheticPairs
from regode.odenet.model import Level, MSODENet, load_model, pyramid
from regode.odenet.motion import recenter
from regode.odenet.train import losses, train
from regode.rotations import euler_matrix, rotation_matrix
from regode.synthetic import phantom_labels, render
from regode.transforms import Affine, Rigid
from regode.warp import resample

runner = CliRunner()
OBLIQUE = tuple(euler_matrix(torch.tensor([0.2, -0.3, 0.4], dtype=torch.float64)).numpy().ravel())


class Constant(nn.Module):
    """A hand-made f: the same velocity (in the level grid's axes) whatever the images."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, warped, fixed, t, force, to_control=None, spacing=None):
        if self.value.numel() in (6, 12):
            return self.value.expand(warped.shape[0], -1)
        v = self.value[None, :, None, None, None]
        return v.expand(
            warped.shape[0], 3, *(to_control(warped).shape[2:] if callable(to_control) else warped.shape[2:])
        ).clone()


@pytest.mark.parametrize("schedule", ["F(0.25)-F(0.5)", "R(0.5)-R(1)", "A(1e-3)-A(1e-4)", "F(0.1)-A(1e-3)"])
@pytest.mark.parametrize("kind", ["rigid", "affine", "bspline", "dense"])
def test_constant_velocity_integrates_exactly(kind, schedule):
    grid = Grid((12, 10, 8), (4.0, 4.0, 4.0), (-20.0, -18.0, -14.0), OBLIQUE)
    model = MSODENet(
        ModelConfig(kind=kind, levels=2, horizon=2.0, schedule=schedule, spacing=4.0, control_spacing=16.0)
    )
    value = {
        "rigid": torch.tensor([0.05, -0.02, 0.03, 1.5, -2.0, 0.5]),
        "affine": torch.tensor([0.04, -0.02, 0.01, 0.03, -0.05, 0.02, -0.01, 0.02, 0.06, 1.5, -2.0, 0.5]),
    }.get(kind, torch.tensor([1.5, -2.0, 0.5]))
    for i in range(2):
        model.nets[i] = Constant(value)
    volume = torch.rand(1, 1, *grid.shape)
    levels = pyramid(volume, grid, 2)
    theta, nfe = model(levels, levels)
    d = torch.as_tensor(grid.direction_matrix, dtype=torch.float32)
    if kind == "rigid":
        # a constant body velocity: R(s) = exp(s [w]), translation = integral of R(s) t ds
        omega, shift = torch.det(d) * d @ value[:3], d @ value[3:]
        s = (torch.arange(4000, dtype=torch.float64) + 0.5) / 2000
        moved = (rotation_matrix(s[:, None] * omega.double()) @ shift.double()).mean(0) * 2.0
        tol = 1e-5 if schedule.startswith("R") else 2e-2  # Euler and adaptive Heun (tol 1e-3) are less exact
        torch.testing.assert_close(theta[0, :3], omega * 2.0, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(theta[0, 3:].double(), moved, atol=tol, rtol=tol)
    elif kind == "affine":
        # a constant body velocity v(r) = M r + tau: A(s) = exp(s M), translation = integral of A(s) tau ds
        m, tau = (d @ value[:9].reshape(3, 3) @ d.T).double(), (d @ value[9:]).double()
        s = (torch.arange(4000, dtype=torch.float64) + 0.5) / 2000
        moved = (torch.matrix_exp(s[:, None, None] * m) @ tau).mean(0) * 2.0
        tol = 1e-5 if schedule.startswith("R") else 2e-2
        torch.testing.assert_close(
            theta[0, :9].double().reshape(3, 3),
            torch.matrix_exp(2 * m) - torch.eye(3, dtype=torch.float64),
            atol=tol,
            rtol=tol,
        )
        torch.testing.assert_close(theta[0, 9:].double(), moved, atol=tol, rtol=tol)
    else:
        world = (d @ value) * 2.0  # mm after T = 2 in world axes, at every state point
        torch.testing.assert_close(
            theta.movedim(1, -1).reshape(-1, 3), world.expand(theta[0, 0].numel(), 3), atol=1e-4, rtol=1e-4
        )
    assert all(n >= 1 for n in nfe) and len(nfe) == 2


@pytest.mark.parametrize("kind", ["rigid", "bspline"])
def test_a_model_integrates_only_the_levels_asked_for(kind):
    """``levels=2`` of 3 stops theta at two thirds of the horizon, after the two coarse levels."""
    grid = Grid((16, 12, 12), (2.0, 2.0, 2.0), (-16.0, -12.0, -12.0), OBLIQUE)
    model = MSODENet(
        ModelConfig(
            kind=kind, levels=3, horizon=3.0, schedule="F(0.5)-F(0.5)-F(0.25)", spacing=2.0, control_spacing=8.0
        )
    )
    value = torch.tensor([0.0, 0.0, 0.0, 1.5, -2.0, 0.5]) if kind == "rigid" else torch.tensor([1.5, -2.0, 0.5])
    for i in range(3):
        model.nets[i] = Constant(value)
    levels = pyramid(torch.rand(1, 1, *grid.shape), grid, 3)
    full, nfe_full = model(levels, levels)
    part, nfe_part = model(levels, levels, levels=2)
    assert nfe_part == nfe_full[:2] == [2, 2] and nfe_full[2] == 4
    torch.testing.assert_close(
        part, full * 2 / 3, atol=1e-5, rtol=1e-5
    )  # a constant velocity: theta grows linearly in time
    for wrong in (0, 4):
        with pytest.raises(ValueError, match="integrates 1 to 3 levels"):
            model(levels, levels, levels=wrong)


def test_the_levels_each_kind_runs_by_default():
    """With the polish: the rigid network its coarsest level, the others all but the finest; every
    level without the polish; an explicit count for every kind."""
    from regode.odenet.config import RegisterConfig

    polished, bare, three = RegisterConfig(), RegisterConfig(polish=False), RegisterConfig(network_levels=3)
    assert [polished.levels_run(kind, 3) for kind in ("rigid", "affine", "bspline", "dense")] == [1, 2, 2, 2]
    assert polished.levels_run("bspline", 1) == polished.levels_run("rigid", 1) == 1
    assert [bare.levels_run(kind, 3) for kind in ("rigid", "bspline")] == [3, 3]
    assert [three.levels_run(kind, 3) for kind in ("rigid", "bspline")] == [3, 3]


def test_schedule_parsing():
    solvers = parse_schedule("A(1e-3)-A(1e-3)-F(0.1)", 3)
    assert [s.method for s in solvers] == ["adaptive_heun", "adaptive_heun", "euler"]
    assert solvers[0].kwargs() == {"method": "adaptive_heun", "rtol": 1e-3, "atol": 1e-3}
    assert solvers[2].kwargs() == {"method": "euler", "options": {"step_size": 0.1}}
    for bad in ("F(0.1)-F(0.1)", "X(1)-F(1)-F(1)", "F(0.1)F(0.2)-F(1)", "F(-1)-F(1)-F(1)"):
        with pytest.raises(RegodeError, match="schedule"):
            parse_schedule(bad, 3)


def test_recenter_keeps_the_motion():
    params = torch.tensor([[0.3, -0.2, 0.5, 4.0, -3.0, 7.0]], dtype=torch.float64)
    old, new = (
        torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64),
        torch.tensor([[-10.0, 5.0, 20.0]], dtype=torch.float64),
    )
    pts = torch.randn(1, 50, 3, dtype=torch.float64) * 40
    torch.testing.assert_close(Rigid(params, old)(pts), Rigid(recenter(params, old, new), new)(pts))


def _tiny(kind):
    return TrainConfig(
        model=ModelConfig(kind=kind, levels=2, horizon=2.0, schedule="F(0.5)-F(0.5)", spacing=6.0, width=4),
        size=24,
        batch=1,
        steps=3,
        lr=1e-3,
        checkpoint_every=1,
        validate_every=2,
        val_pairs=1,
    )


@pytest.mark.parametrize("kind", ["rigid", "affine", "bspline", "dense"])
def test_checkpoint_round_trip(tmp_path, kind):
    config = _tiny(kind)
    torch.manual_seed(1)
    model = MSODENet(config.model)
    for p in model.parameters():  # make the zero-initialised heads non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    checkpoint.save(tmp_path / "m.pt", "regode.msodenet", model, config, 7, 1.0, [])
    again, doc = load_model(tmp_path / "m.pt", kind)
    assert doc["step"] == 7 and again.config == model.config
    pair = SyntheticPairs(kind, size=24, spacing=6.0, seed=3).batch(0, 1)
    with torch.no_grad():
        a = model(pyramid(pair.fixed, pair.grid, 2), pyramid(pair.moving, pair.grid, 2), pair.theta0, pair.center)[0]
        b = again(pyramid(pair.fixed, pair.grid, 2), pyramid(pair.moving, pair.grid, 2), pair.theta0, pair.center)[0]
    assert a.abs().sum() > 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_lowers_the_loss():
    config = _tiny("rigid")
    torch.manual_seed(0)
    model = MSODENet(config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    pair = SyntheticPairs("rigid", size=24, spacing=6.0, seed=5, motion=MotionRange(max_rotation=20)).batch(0, 2)
    errors = []
    for _ in range(20):
        loss, info = losses(model, pair, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(info["self"])
    assert errors[-1] < 0.8 * errors[0]


def test_adjoint_gradients_match_backprop():
    """With an accurate solver (rk4) the adjoint ODE gives the gradients of plain backprop."""
    config = _tiny("bspline")
    config = replace(
        config,
        model=ModelConfig(kind="bspline", levels=2, horizon=2.0, schedule="R(0.25)-R(0.25)", spacing=6.0, width=4),
    )
    torch.manual_seed(0)
    model = MSODENet(config.model)
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    pair = SyntheticPairs("bspline", size=24, spacing=6.0, seed=2).batch(0, 1)
    grads = []
    for adjoint in (False, True):
        model.zero_grad()
        loss, _ = losses(model, pair, config, adjoint=adjoint)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) > 0.99
    assert abs(float(grads[0].norm() / grads[1].norm()) - 1) < 0.02


def test_resume_continues_exactly(tmp_path):
    config = _tiny("rigid")
    train(config, tmp_path / "full.pt", progress=False)
    config = replace(config, steps=2)
    train(config, tmp_path / "part.pt", progress=False)
    train(config, tmp_path / "part.pt", resume=True, progress=False, steps=3)
    a = checkpoint.load(tmp_path / "full.pt", "regode.msodenet", "MS-ODENet")["model"]
    b = checkpoint.load(tmp_path / "part.pt", "regode.msodenet", "MS-ODENet")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint.load(tmp_path / "part.pt", "regode.msodenet", "MS-ODENet")["step"] == 3


def test_train_cli_writes_model_and_log(tmp_path):
    out = tmp_path / "tiny.pt"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "dense",
            "--synthetic",
            "--out",
            str(out),
            "--steps",
            "2",
            "--size",
            "24",
            "--spacing",
            "6",
            "--levels",
            "2",
            "--schedule",
            "F(0.5)-F(1)",
            "--width",
            "4",
            "--batch",
            "1",
            "--validate-every",
            "1",
            "--max-sigma",
            "4",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    model, doc = load_model(out, "dense")
    assert "optimizer" not in doc and doc["step"] == 2 and doc["train_config"]["lambda_reg"] == 10.0
    assert doc["train_config"]["motion"]["max_sigma"] == 4.0
    # the untrained model's validation (step 0) is the baseline, then one per step
    assert [h["step"] for h in doc["history"]] == [0, 1, 2] and (tmp_path / "tiny.pt.ckpt").exists()


# ------------------------------------------------------------------------------- register
@pytest.fixture(scope="module")
def rotated_pair(tmp_path_factory):
    """A two-contrast phantom pair, the moving one rotated by 20 degrees (and shifted)."""
    folder = tmp_path_factory.mktemp("pair")
    grid = Grid((80, 96, 64), (1.5, 1.5, 2.0), (-60.0, -72.0, -64.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = phantom_labels(grid, 20, 0)
    truth = Rigid(
        torch.tensor([[0.0, 0.0, np.deg2rad(20), 4.0, -3.0, 2.0]], dtype=torch.float64),
        torch.as_tensor(grid.center)[None],
    )
    write_image(render(labels, grid, 1), grid, folder / "fixed.nii.gz")
    write_image(resample(render(labels, grid, 2), grid, grid, truth.inverse()), grid, folder / "moving.nii.gz")
    write_image(
        resample(labels.float(), grid, grid, truth.inverse(), "label"), grid, folder / "labels.nii.gz", np.int16
    )
    return folder, truth


def _identity_model(kind: str) -> MSODENet:
    """An MS-ODENet whose every velocity is zero (untrained learned term, force step 0)."""
    model = MSODENet(ModelConfig(kind=kind))
    for net in model.nets:
        net.without_force()
    return model


def _angle(found, truth) -> float:
    r = found.matrix[0].double() @ truth.matrix[0].double().T
    return float(np.degrees(np.arccos(np.clip((float(torch.trace(r)) - 1) / 2, -1, 1))))


def test_register_recovers_a_20_degree_rotation(rotated_pair, tmp_path):
    """The shipped rigid model with its mutual-information polish; --no-polish skips the polish."""
    import json

    folder, truth = rotated_pair
    # with the polish the rigid network runs its coarsest level only (its registry entry's polished_levels); every level
    # where no polish follows, or where --network-levels asks
    for name, extra, levels in (("r_", [], 1), ("n_", ["--no-polish"], 3), ("a_", ["--network-levels", "3"], 3)):
        out = str(tmp_path / name)
        result = runner.invoke(
            app,
            [
                "register",
                "-f",
                str(folder / "fixed.nii.gz"),
                "-m",
                str(folder / "moving.nii.gz"),
                "-o",
                out,
                "--model",
                "rigid",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        doc = json.loads(open(out + "regode.json").read())
        polished = name != "n_"
        assert doc["config"]["polish"] == polished and ("rigid_polish" in doc["timings_s"]) == polished
        assert len(doc["nfe"]["rigid"]) == levels == doc["network_levels_run"]["rigid"], doc["nfe"]
    found = load_transform(str(tmp_path / "r_0GenericAffine.mat"))
    assert _angle(found, truth) < 2.0
    pts = truth.center[:, None] + torch.randn(1, 100, 3, dtype=torch.float64) * 30
    assert float((found(pts) - truth(pts)).norm(dim=-1).square().mean().sqrt()) < 1.5


def test_register_writes_the_fixed_to_moving_mapping(tmp_path):
    """End-to-end geometry of register's files: a pure 12 mm shift of an oblique, anisotropic image
    is found by the centre-of-mass start (the model's velocity is zero), and the .mat maps fixed
    points to moving points, with labels and images on the fixed grid."""
    grid = Grid((64, 72, 40), (1.5, 1.25, 2.5), (-40.0, -45.0, -50.0), OBLIQUE)
    labels = phantom_labels(grid, 12, 3)
    shift = torch.tensor([[8.0, -6.0, 6.0]], dtype=torch.float64)
    truth = Rigid(torch.cat([torch.zeros(1, 3, dtype=torch.float64), shift], 1))
    write_image(render(labels, grid, 1), grid, tmp_path / "f.nii.gz")
    write_image(resample(render(labels, grid, 1), grid, grid, truth.inverse()), grid, tmp_path / "m.nii.gz")
    write_image(resample(labels.float(), grid, grid, truth.inverse(), "label"), grid, tmp_path / "ml.nii.gz", np.int16)
    model = _identity_model("rigid")
    checkpoint.save(tmp_path / "r.pt", "regode.msodenet", model, TrainConfig(model=model.config), 0, 0.0, [])
    out = str(tmp_path / "t_")
    result = runner.invoke(
        app,
        [
            "register",
            "-f",
            str(tmp_path / "f.nii.gz"),
            "-m",
            str(tmp_path / "m.nii.gz"),
            "-o",
            out,
            "--model",
            "rigid",
            "--checkpoint",
            str(tmp_path / "r.pt"),
            "--moving-labels",
            str(tmp_path / "ml.nii.gz"),
        ],
    )
    assert result.exit_code == 0, result.output
    found = load_transform(out + "0GenericAffine.mat")
    pts = torch.as_tensor(grid.center)[None, None] + torch.randn(1, 100, 3, dtype=torch.float64) * 20
    assert float((found(pts) - truth(pts)).norm(dim=-1).max()) < 1.0
    warped = read_image(out + "WarpedLabels.nii.gz")
    assert warped.dtype == np.int16 and warped.grid.same_as(grid)
    assert set(np.unique(warped.data.numpy())) <= set(range(12))
    inner = labels[0, 0].numpy() > 0
    assert (warped.data[0, 0].numpy()[inner] == labels[0, 0].numpy()[inner]).mean() > 0.9
    for suffix in ("Warped.nii.gz", "InverseWarped.nii.gz", "regode.json"):
        assert (tmp_path / f"t_{suffix}").exists()


def test_register_starts_rigid_models_from_the_principal_axes(tmp_path):
    """A 110-degree turn (across contrasts) is beyond any local optimiser; the principal-axes start
    finds it (the model's velocity is zero here); --no-principal-axes, --no-center-of-mass and
    --initial-transform each skip it."""
    import json

    grid = Grid((56, 64, 52), (3.0, 3.0, 3.0), (-80.0, -95.0, -75.0), OBLIQUE)
    labels = phantom_labels(grid, 12, 4)
    truth = Rigid(
        torch.tensor([[0.4, -1.6, 0.9, 5.0, -4.0, 6.0]], dtype=torch.float64), torch.as_tensor(grid.center)[None]
    )
    assert _angle(truth, Rigid(torch.zeros(1, 6, dtype=torch.float64))) > 100
    write_image(render(labels, grid, 1), grid, tmp_path / "f.nii.gz")
    write_image(resample(render(labels, grid, 2), grid, grid, truth.inverse()), grid, tmp_path / "m.nii.gz")
    model = MSODENet(ModelConfig(kind="rigid", spacing=3.0))
    for net in model.nets:
        net.without_force()
    checkpoint.save(tmp_path / "r.pt", "regode.msodenet", model, TrainConfig(model=model.config), 0, 0.0, [])
    pts = torch.as_tensor(grid.center)[None, None] + torch.randn(1, 200, 3, dtype=torch.float64) * 30
    errors = {}
    from regode.io import save_transform
    from regode.transforms import Affine

    save_transform(Affine(torch.eye(3, dtype=torch.float64)), tmp_path / "identity.mat")
    runs = {
        "pa": [],
        "com": ["--no-principal-axes"],
        "none": ["--no-center-of-mass"],
        "given": ["--initial-transform", str(tmp_path / "identity.mat")],
    }
    for name, extra in runs.items():
        out = str(tmp_path / name)
        result = runner.invoke(
            app,
            [
                "register",
                "-f",
                str(tmp_path / "f.nii.gz"),
                "-m",
                str(tmp_path / "m.nii.gz"),
                "-o",
                out,
                "--model",
                "rigid",
                "--checkpoint",
                str(tmp_path / "r.pt"),
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        errors[name] = float(
            (load_transform(out + "0GenericAffine.mat")(pts) - truth(pts)).norm(dim=-1).square().mean().sqrt()
        )
        doc = json.loads(open(out + "regode.json").read())
        assert (doc["principal_axes"] is None) == (name != "pa")
    assert errors["pa"] < 4.0 and min(errors["com"], errors["none"], errors["given"]) > 40.0


def test_register_writes_ants_readable_deformable_outputs(rotated_pair, tmp_path):
    """A hybrid run with a zero-velocity B-spline model and no polish: the files exist, are readable
    by SimpleITK, and the warp of an identity model is zero."""
    import SimpleITK as sitk

    folder, _ = rotated_pair
    model = _identity_model("bspline")
    checkpoint.save(tmp_path / "b.pt", "regode.msodenet", model, TrainConfig(model=model.config), 0, 0.0, [])
    out = str(tmp_path / "h_")
    result = runner.invoke(
        app,
        [
            "register",
            "-f",
            str(folder / "fixed.nii.gz"),
            "-m",
            str(folder / "moving.nii.gz"),
            "-o",
            out,
            "--model",
            "rigid+bspline",
            "--checkpoint",
            str(tmp_path / "b.pt"),
            "--device",
            "cpu",
            "--no-polish",
        ],
    )
    assert result.exit_code == 0, result.output
    warp = sitk.ReadImage(out + "1Warp.nii.gz")
    assert warp.GetNumberOfComponentsPerPixel() == 3 and warp.GetSize() == (80, 96, 64)
    assert np.abs(sitk.GetArrayFromImage(warp)).max() < 1e-4
    sitk.ReadTransform(out + "0GenericAffine.mat")


def _run(args):
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_register_bad_inputs(rotated_pair, tmp_path):
    folder, _ = rotated_pair
    f, m = str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz")
    out = str(tmp_path / "bad_")
    code, text = _run(["register", "-f", str(tmp_path / "missing.nii.gz"), "-m", m, "-o", out, "--model", "rigid"])
    assert code == 1 and "missing.nii.gz" in text
    grid4 = np.zeros((2, 8, 8, 8), dtype=np.float32)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(grid4, isVector=False), str(tmp_path / "four.nii.gz"))
    code, text = _run(["register", "-f", f, "-m", str(tmp_path / "four.nii.gz"), "-o", out, "--model", "rigid"])
    assert code == 1 and "3D" in text
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a torch file" * 10)
    code, text = _run(
        ["register", "-f", f, "-m", m, "-o", out, "--model", "rigid", "--checkpoint", str(tmp_path / "corrupt.pt")]
    )
    assert code == 1 and "cannot read checkpoint" in text
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "foreign.pt")
    code, text = _run(
        ["register", "-f", f, "-m", m, "-o", out, "--model", "rigid", "--checkpoint", str(tmp_path / "foreign.pt")]
    )
    assert code == 1 and "not a regode MS-ODENet checkpoint" in text
    code, text = _run(["register", "-f", f, "-m", m, "-o", str(tmp_path / "no" / "dir_"), "--model", "rigid"])
    assert code == 1 and "does not exist" in text
    assert not list(tmp_path.glob("bad_*"))


def test_register_rejects_a_mismatched_label_image(rotated_pair, tmp_path):
    folder, _ = rotated_pair
    grid = Grid((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(np.ones((10, 10, 10), np.int16), grid, tmp_path / "small.nii.gz", np.int16)
    code, text = _run(
        [
            "register",
            "-f",
            str(folder / "fixed.nii.gz"),
            "-m",
            str(folder / "moving.nii.gz"),
            "-o",
            str(tmp_path / "x_"),
            "--model",
            "rigid",
            "--moving-labels",
            str(tmp_path / "small.nii.gz"),
        ]
    )
    assert code == 1 and "not on the moving image's grid" in text
    assert not list(tmp_path.glob("x_*"))


def test_load_model_checks_the_kind(tmp_path):
    model = MSODENet(ModelConfig(kind="dense"))
    checkpoint.save(tmp_path / "d.pt", "regode.msodenet", model, TrainConfig(model=model.config), 0, 0.0, [])
    with pytest.raises(RegodeError, match="dense model"):
        load_model(tmp_path / "d.pt", "rigid")


def test_train_cli_default_batch(tmp_path):
    out = tmp_path / "b.pt"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "rigid",
            "--out",
            str(out),
            "--steps",
            "1",
            "--size",
            "24",
            "--spacing",
            "6",
            "--levels",
            "2",
            "--schedule",
            "F(0.5)-F(1)",
            "--width",
            "4",
            "--validate-every",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = checkpoint.load(out, "regode.msodenet", "MS-ODENet")
    assert (
        doc["train_config"]["batch"] == 2 and doc["train_config"]["motion"]["ramp_pairs"] == 1
    )  # 0.5 * 1 step * 2 pairs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blur_paths_agree(dtype):
    """Without gradients the blur runs in SciPy, with them as a convolution: the same filter,
    replicated borders included (one axis shorter than the kernel), sigma-free axes untouched."""
    from regode.preprocess import blur

    volume = torch.rand(2, 3, 5, 21, 22, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sigmas = (0.7, 0.05, 2.4)  # x, y (left alone), z: radius 8 along an axis of 5
    fast = blur(volume, sigmas)
    graded = blur(volume.clone().requires_grad_(True), sigmas)
    assert graded.requires_grad and fast.dtype == dtype
    torch.testing.assert_close(fast, graded.detach(), rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
    # a constant stays constant
    torch.testing.assert_close(blur(torch.full_like(volume, 0.5), sigmas), torch.full_like(volume, 0.5))
    assert not torch.allclose(fast, volume)


def test_dense_velocity_is_smoothed():
    """An untrained dense network turns a force concentrated at one voxel into a Gaussian bump of
    about the same total (the update-field smoothing); without smoothing it stays a spike."""
    from regode.odenet.networks import UNet

    size = (24, 24, 24)
    force = torch.zeros(1, 3, *size)
    force[0, 0, 12, 12, 12] = 1.0
    image = torch.zeros(1, 1, *size)
    smooth, sharp = UNet(width=4), UNet(width=4, smoothing=0.0)
    with torch.no_grad():
        a, b = smooth(image, image, 0.0, force), sharp(image, image, 0.0, force)
    assert float(a[0, 0].sum()) == pytest.approx(float(b[0, 0].sum()), rel=0.05)
    assert float(a[0, 0].max()) < 0.25 * float(b[0, 0].max())  # 0.11 with the default 4 voxels
    assert float(a[0, 1:].abs().max()) == 0.0


def test_register_dense_with_the_shipped_model_reduces_a_deformation(tmp_path):
    """The shipped dense model, network alone and with its polish, on a two-contrast phantom moved
    by a smooth deformation: both bring the warp closer to the truth than identity, the polish
    closer still, and the written 1Warp is that mapping."""
    import json

    import SimpleITK as sitk

    from regode.synthetic import random_bspline

    grid = Grid((64, 72, 56), (2.0, 2.0, 2.0), (-64.0, -72.0, -56.0), OBLIQUE)
    labels = phantom_labels(grid, 14, 1)
    truth = random_bspline(grid, 40.0, 6.0, seed=2)
    write_image(render(labels, grid, 1), grid, tmp_path / "fixed.nii.gz")
    write_image(resample(render(labels, grid, 2), grid, grid, truth.inverse(grid)), grid, tmp_path / "moving.nii.gz")
    head = render(labels, grid, 1)[0, 0].numpy() > 0.1 * float(render(labels, grid, 1).max())
    true_field = truth.displacement(grid)[0].numpy()
    errors = {}
    for name, extra in (("p_", []), ("n_", ["--no-polish"])):
        out = str(tmp_path / name)
        result = runner.invoke(
            app,
            [
                "register",
                "-f",
                str(tmp_path / "fixed.nii.gz"),
                "-m",
                str(tmp_path / "moving.nii.gz"),
                "-o",
                out,
                "--model",
                "dense",
                "--no-center-of-mass",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        doc = json.loads(open(out + "regode.json").read())
        assert ("dense" in doc["polish"]) == (not extra)
        warp = np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(out + "1Warp.nii.gz")), -1, 0)  # [3, z, y, x], LPS mm
        errors[name] = float(np.sqrt(((warp - true_field) ** 2).sum(0)[head].mean()))
    identity = float(np.sqrt((true_field**2).sum(0)[head].mean()))
    # measured: identity 5.1 mm, the network 3.6 mm, with the polish 2.0 mm
    assert errors["n_"] < 0.85 * identity and errors["p_"] < 0.75 * errors["n_"], (errors, identity)


def test_mutual_information_to_a_fixed_reference():
    """MS-ODENet's force uses the fixed level's Parzen windows computed once: the same value as
    mutual_information for a batch against a batch-1 reference, a maximum at the reference
    itself, and a clear error for a volume of another size."""
    from regode.losses import MutualInformationTo, mutual_information

    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, 20, 18, 16, generator=gen)
    moving = torch.stack([fixed[0], 1 - fixed[0], torch.rand(1, 20, 18, 16, generator=gen)])  # [3, 1, ...]
    to_fixed = MutualInformationTo(fixed)
    per_image = [float(to_fixed(m[None])) for m in moving]
    assert per_image == pytest.approx([float(mutual_information(m[None], fixed)) for m in moving], rel=1e-6)
    assert float(to_fixed(moving)) == pytest.approx(sum(per_image) / 3, rel=1e-6)
    assert per_image[0] == pytest.approx(per_image[1], rel=1e-3) and per_image[2] < 0.2 * per_image[0]
    with pytest.raises(ValueError, match="voxels"):
        to_fixed(torch.rand(1, 1, 10, 10, 10))


def test_networks_written_before_the_log_step_still_load():
    """Files that hold each network's force step itself (``step``, before it was learned on a log
    scale) load with the same step."""
    model = MSODENet(ModelConfig(kind="bspline", levels=2, horizon=2.0, schedule="F(0.5)-F(0.5)", spacing=6.0, width=4))
    state = model.state_dict()
    for key in [k for k in state if k.endswith("log_step")]:
        state[key.replace("log_step", "step")] = torch.tensor(7.5)
        del state[key]
    fresh = MSODENet(model.config)
    fresh.load_state_dict(state)
    assert all(abs(float(net.step.detach()) - 7.5) < 1e-5 for net in fresh.nets)
    fresh.nets[0].without_force()
    assert float(fresh.nets[0].step.detach()) == 0.0
    state[next(k for k in state if k.endswith(".step"))] = torch.tensor(-1.0)
    with pytest.raises(RuntimeError, match="negative"):
        MSODENet(model.config).load_state_dict(state)


def test_learning_only_the_steps_then_everything_from_that_file(tmp_path):
    """--learn step moves the force steps and nothing else; --init starts a run from a file's
    weights (its step-0 validation is that file's, not a fresh network's); a file of another
    architecture is refused by name."""
    tiny = [
        "--size",
        "24",
        "--spacing",
        "6",
        "--levels",
        "2",
        "--width",
        "4",
        "--schedule",
        "F(0.5)-F(0.5)",
        "-q",
        "--max-rotation",
        "20",
        "--curriculum",
        "0",
        "--validate-every",
        "2",
    ]
    steps_only = tmp_path / "s.pt"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "rigid",
            "--out",
            str(steps_only),
            "--steps",
            "2",
            "--learn",
            "step",
            "--lr",
            "0.1",
            *tiny,
        ],
    )
    assert result.exit_code == 0, result.output
    trained, _ = load_model(steps_only)
    torch.manual_seed(0)
    fresh = MSODENet(trained.config)
    for (name, a), (_, b) in zip(trained.state_dict().items(), fresh.state_dict().items(), strict=False):
        assert torch.equal(a, b) != name.endswith("log_step"), name
    everything = tmp_path / "e.pt"
    result = runner.invoke(
        app, ["train", "--model", "rigid", "--out", str(everything), "--steps", "2", "--init", str(steps_only), *tiny]
    )
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "e.pt.log.jsonl").read_text().splitlines()[0])
    last = json.loads((tmp_path / "s.pt.log.jsonl").read_text().splitlines()[-1])
    assert first["step"] == 0 and abs(first["val_rmse_mm"] - last["val_rmse_mm"]) < 1e-4
    refused = runner.invoke(
        app,
        [
            "train",
            "--model",
            "rigid",
            "--out",
            str(tmp_path / "w.pt"),
            "--steps",
            "1",
            "--init",
            str(steps_only),
            *tiny[:6],
            "--width",
            "8",
            "-q",
        ],
    )
    assert refused.exit_code != 0 and "regode: error: --init" in refused.output
    steps_only.unlink()  # a resumed run takes its weights from its checkpoint, not from --init
    resumed = runner.invoke(
        app, ["train", "--model", "rigid", "--out", str(everything), "--resume", "--steps", "3", "-q"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(everything, weights_only=True)["step"] == 3
    missing = runner.invoke(
        app,
        [
            "train",
            "--model",
            "rigid",
            "--out",
            str(tmp_path / "m.pt"),
            "--steps",
            "1",
            "--init",
            str(steps_only),
            *tiny,
        ],
    )
    assert missing.exit_code != 0 and "regode: error: --init" in missing.output


def test_train_validates_on_a_dataset_folder(tmp_path):
    """--validate-data logs RMSE(phi) on a folder's subjects moved by fixed motions, beside the
    synthetic validation; the figure is that of the folder's own pairs (not the synthetic ones)."""
    root = tmp_path / "real"
    grid = Grid((30, 30, 30), (6.0, 6.0, 6.0), (-87.0, -87.0, -87.0))
    labels = phantom_labels(grid, 6, seed=1)
    (root / "sub0").mkdir(parents=True)
    for c, contrast in enumerate(("t1", "t2")):
        write_image(render(labels, grid, seed=c), grid, root / "sub0" / f"{contrast}.nii.gz")
    out = tmp_path / "r.pt"
    args = [
        "train",
        "--model",
        "rigid",
        "--out",
        str(out),
        "--steps",
        "1",
        "--size",
        "24",
        "--spacing",
        "6",
        "--levels",
        "2",
        "--width",
        "4",
        "--validate-every",
        "1",
        "-q",
        "--validate-data",
        str(root),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "r.pt.log.jsonl").read_text().splitlines()]
    assert "val_rmse_mm_real" in records[0] and "val_rmse_mm_real" in records[-1]
    assert records[0]["val_rmse_mm_real"] != records[0]["val_rmse_mm"] and records[0]["val_rmse_mm_real"] > 1.0
    assert ", real " in result.output
    refused = runner.invoke(
        app, [*args[:-2], "--validate-data", str(tmp_path / "none"), "--out", str(tmp_path / "s.pt")]
    )
    assert refused.exit_code != 0 and "regode: error:" in refused.output
    twice = runner.invoke(app, [*args, "--validate-data", str(root), "--out", str(tmp_path / "t.pt")])
    assert twice.exit_code != 0 and "regode: error: --validate-data" in twice.output


class Recorder(nn.Module):
    """A network that records the similarity force it is given and returns no velocity."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.forces = kind, []

    def forward(self, warped, fixed, t, force, *rest):
        self.forces.append(force.detach())
        if self.kind == "bspline":
            return torch.zeros_like(rest[0](force))  # rest[0]: to_control
        if self.kind == "dense":
            return torch.zeros_like(force)
        return torch.zeros(force.shape[0], {"rigid": 6, "affine": 12}[self.kind])


@pytest.mark.parametrize(
    "kind, where",
    [("rigid", "pre"), ("rigid", "theta"), ("rigid", "both"), ("affine", "both"), ("bspline", "pre"), ("dense", "pre")],
)
def test_the_force_points_where_the_velocity_acts(kind, where):
    """The moving image is the fixed one moved by a turn (90 degrees about z as the start ``pre``,
    90 degrees about x as the state theta, or both) after a 6 mm shift along y of the fixed points.
    The velocity acts on the fixed points before those turns, so the force the networks see must
    point along +y; taken in the moving image's space (as before this was mended) it pointed along
    x or z, and the rigid flow went astray from any start with a large rotation. With both turns,
    composing them in the wrong order would point it along x."""
    grid = Grid((24, 24, 24), (4.0, 4.0, 4.0), (-46.0, -46.0, -46.0))
    blobs = torch.tensor(
        [[-12.0, 8.0, 4.0, 14.0], [16.0, -6.0, -8.0, 10.0], [2.0, 18.0, -14.0, 8.0]], dtype=torch.float64
    )

    def phantom(points):
        d2 = (points[..., None, :] - blobs[:, :3]).square().sum(-1)
        return torch.exp(-d2 / (2 * blobs[:, 3] ** 2)).sum(-1).clamp(max=1.0)

    about_z = rotation_matrix(torch.tensor([0.0, 0.0, np.pi / 2], dtype=torch.float64))
    about_x = rotation_matrix(torch.tensor([np.pi / 2, 0.0, 0.0], dtype=torch.float64))
    pre = None if where == "theta" else Affine(about_z.float())
    state = about_x if where in ("theta", "both") else torch.eye(3, dtype=torch.float64)
    theta0 = None
    if where != "pre":
        theta0 = (
            torch.tensor([[np.pi / 2, 0.0, 0.0, 0.0, 0.0, 0.0]])
            if kind == "rigid"
            else torch.cat(
                [(about_x - torch.eye(3, dtype=torch.float64)).reshape(1, 9), torch.zeros(1, 3, dtype=torch.float64)], 1
            ).float()
        )
    turn = (torch.eye(3, dtype=torch.float64) if pre is None else about_z) @ state  # the map is pre(theta(x))
    shift = torch.tensor([0.0, 6.0, 0.0], dtype=torch.float64)
    points = grid.world_points(dtype=torch.float64)  # moving(turn (x + shift)) = fixed(x)
    fixed = phantom(points)[None, None].float()
    moving = phantom(points @ turn - shift)[None, None].float()
    model = MSODENet(ModelConfig(kind=kind, levels=1, horizon=1.0, schedule="F(1)", spacing=4.0, control_spacing=16.0))
    model.nets[0] = recorder = Recorder(kind)
    model([Level(fixed, grid)], [Level(moving, grid)], theta0, pre=pre)
    total = recorder.forces[0].sum((2, 3, 4))[0].double()  # grid axes = world axes here
    assert float(total @ shift) / float(total.norm() * shift.norm()) > 0.9


def test_the_force_field_is_the_gradient_at_every_voxel_in_grid_axes():
    """The force a network is given: the gradient of mutual information with respect to a world
    displacement of each voxel (zero where MI does not read), in the fixed grid's axes, times the
    voxel count. Checked against automatic differentiation over the whole level, on an oblique grid
    where MI reads every second voxel, for a batch of two moving images."""
    from regode.odenet.model import Dynamics
    from regode.sampling import sample_normalised

    grid = Grid((56, 50, 48), (3.0, 3.0, 3.0), (-80.0, -70.0, -70.0), OBLIQUE)
    labels = phantom_labels(grid, 10, 3)
    fixed = render(labels, grid, 1)
    moving = torch.cat([render(labels, grid, 2), render(labels, grid, 3)]).roll(2, dims=3)
    model = MSODENet(
        ModelConfig(kind="bspline", levels=1, horizon=1.0, schedule="F(1)", spacing=3.0, control_spacing=15.0)
    )
    model.nets[0] = recorder = Recorder("bspline")
    model([Level(fixed, grid)], [Level(moving, grid)])
    found = recorder.forces[0]
    dyn = Dynamics(
        model,
        0,
        Level(fixed, grid),
        Level(moving, grid),
        model.state_grid(grid),
        torch.as_tensor(grid.center, dtype=torch.float32).expand(2, 3),
        None,
    )
    assert dyn.similarity.step == 2 and found.shape == (2, 3, *grid.shape)
    theta = model.identity(grid, 2)
    coords = dyn.moving_coordinates(theta)
    to_moving = dyn.kind.pullback(dyn, theta).transpose(-1, -2).float()  # world mm -> moving normalised
    u = torch.zeros(2, grid.shape[0] * grid.shape[1] * grid.shape[2], 3, requires_grad=True)
    values = sample_normalised(moving, grid, (coords.reshape(2, -1, 3) + u @ to_moving).reshape(coords.shape))
    (grad,) = torch.autograd.grad(dyn.similarity(values) * 2, u)
    expected = ((grad @ dyn.direction) * u.shape[1]).reshape(coords.shape).movedim(-1, 1)
    assert float(expected.abs().max()) > 0 and bool((expected[:, :, 0, 0, 1] == 0).all())  # voxel 1 is not read
    torch.testing.assert_close(found, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-4)


def test_the_bspline_network_adds_its_step_times_the_spread_force():
    """An untrained B-spline network's velocity is its step times the force as the kind spreads it
    onto the control points (the learned term starts at zero)."""
    from regode.odenet.networks import BSplineNet

    net = BSplineNet(width=4, step=3.0)
    force = torch.randn(1, 3, 16, 16, 16)
    image = torch.rand(1, 1, 16, 16, 16)
    to_control = lambda f: f[:, :, 2:14:4, 2:14:4, 2:14:4]  # noqa: E731
    spread = lambda f: 0.5 * f[:, :, 1:13:4, 1:13:4, 1:13:4]  # noqa: E731
    with torch.no_grad():
        v = net(image, image, 0.0, force, to_control, spread)
    torch.testing.assert_close(v, 3.0 * spread(force))


def test_the_bspline_force_is_a_weighted_mean_about_each_control_point():
    """The B-spline network's force term spreads the force onto the control points through the
    B-spline's own weights, over the voxels where mutual information reads it (every 4th here): a
    force along x that grows linearly with x at those voxels (zero elsewhere) becomes, at every
    control point whose support lies inside the image, the force at that point, and nothing along
    y and z. The earlier term, a point sample of the pooled force, gave about a quarter of it here, and
    0.07 to 2.1 times it from one control point to another at the 2 mm level of a BraTS pair."""
    grid = Grid((64, 64, 72), (4.0, 4.0, 4.0), (-126.0, -126.0, -142.0))
    model = MSODENet(
        ModelConfig(kind="bspline", levels=1, horizon=1.0, schedule="F(1)", spacing=4.0, control_spacing=20.0)
    )
    x = grid.world_points(dtype=torch.float32)[..., 0]
    seen = {}

    class Spy(nn.Module):
        def forward(self, warped, fixed, t, force, to_control, spread):
            assert force[0, 0].numel() // 60_000 == 4  # MI reads every 4th voxel of this grid
            read = torch.zeros(force[0, 0].numel())
            read[::4] = 1.0
            ramp = torch.zeros_like(force)
            ramp[:, 0] = read.reshape(force.shape[2:]) * (1.0 + x / 100.0)
            seen["mean"] = spread(ramp)
            return torch.zeros_like(to_control(force))

    model.nets[0] = Spy()
    volume = torch.rand(1, 1, *grid.shape)
    model([Level(volume, grid)], [Level(volume, grid)])
    points = model.state_grid(grid).world_points(dtype=torch.float32)  # [z, y, x, 3]
    low, high = torch.tensor(grid.origin) + 40.0, torch.tensor(grid.origin) + (torch.tensor(grid.size) - 1) * 4.0 - 40.0
    inside = ((points >= low) & (points <= high)).all(-1)
    assert int(inside.sum()) >= 27
    torch.testing.assert_close(seen["mean"][0, 0][inside], 1.0 + points[..., 0][inside] / 100.0, atol=2e-3, rtol=0)
    assert float(seen["mean"][0, 1:].abs().max()) == 0.0
