"""The content encoder: translation model, training, checkpoints, E3D, MIND and the capture range."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from regode import checkpoint
from regode.bench.capture import Metrics, basin, moved_by
from regode.cli import app
from regode.encoder.config import EncoderConfig, EncoderTrainConfig
from regode.encoder.data import SyntheticSubjects, cut_slabs, moved_slabs, slab_points
from regode.encoder.features import content_distance, content_volume, e3d, load_encoder, slice_positions
from regode.encoder.networks import Translator
from regode.encoder.train import basin_loss, generator_losses, motion_distances, train, validate
from regode.errors import RegodeError
from regode.losses import mind

runner = CliRunner()
TINY = EncoderConfig(width=4, content=8, style=4, blocks=1, spacing=8.0)


def _tiny_run(**kwargs) -> EncoderTrainConfig:
    values = dict(model=TINY, steps=2, batch=2, size=24, reuse=2, checkpoint_every=1, validate_every=1, val_batches=1)
    values.update(kwargs)
    return EncoderTrainConfig(**values)


def test_shapes_and_style_swap():
    torch.manual_seed(0)
    model = Translator(TINY).eval().requires_grad_(False)
    a, b = torch.rand(2, 5, 21, 26), torch.rand(2, 5, 21, 26)
    ma, mb = torch.tensor([0, 1]), torch.tensor([2, 3])
    content = model.content(a)
    assert content.shape == (2, 8, 11, 13)
    sa, sb = model.style(a, ma), model.style(b, mb)
    assert sa.shape == (2, 4)
    out = model.generator(content, sb, mb, a.shape[-2:])
    assert out.shape == a.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    # translate = G(E^c(a), E^s(b, m_b), m_b): a's content in b's style
    assert torch.allclose(model.translate(a, b, mb), out)
    # swapping the style (or the target modality) changes the image, the same style does not
    assert not torch.allclose(model.generator(content, sa, ma, a.shape[-2:]), out)
    assert not torch.allclose(model.generator(content, sb, ma, a.shape[-2:]), out)
    assert torch.equal(model.generator(content, sb, mb, a.shape[-2:]), out)
    # the style encoder depends on the modality code, the content encoder never sees it
    assert not torch.allclose(model.style(a, mb), sa)


def test_synthetic_subjects_are_paired_modalities():
    source = SyntheticSubjects(("t1", "t2", "flair"), size=24, spacing=8.0, batch=3, reuse=2)
    s = source.batch(0)
    assert s.a.shape == s.b.shape == (3, 5, 24, 24)
    assert (s.modality_a != s.modality_b).all()
    again = SyntheticSubjects(("t1", "t2", "flair"), size=24, spacing=8.0, batch=3, reuse=2).batch(0)
    assert torch.equal(again.a, s.a) and torch.equal(again.modality_b, s.modality_b)


def test_modalities_follow_tissue_contrasts():
    """CSF (the rim, label 1) is dark in T1 and FLAIR and bright in T2; white-matter-like regions
    (brightest in T1) are darker in T2 than in T1."""
    from regode.encoder.data import render_modalities
    from regode.synthetic import random_head, training_grid

    grid = training_grid(40, 5.0)
    gen = torch.Generator().manual_seed(1)
    labels = random_head(grid, gen)
    t1, t2, flair = render_modalities(labels, grid, ("t1", "t2", "flair"), gen)[:, 0]
    rim = labels[0, 0] == 1
    assert float(t2[rim].mean()) > 2 * float(t1[rim].mean()) and float(flair[rim].mean()) < 0.5 * float(t2[rim].mean())
    means = [
        (float(t1[labels[0, 0] == k].mean()), k) for k in range(2, int(labels.max()) + 1) if (labels[0, 0] == k).any()
    ]
    brightest = labels[0, 0] == max(means)[1]
    assert float(t2[brightest].mean()) < float(t1[brightest].mean())


def test_cut_slabs_stacks_adjacent_slices():
    v = torch.arange(6 * 4 * 5, dtype=torch.float32).reshape(1, 1, 6, 4, 5)
    slabs = cut_slabs(v, 2, [0, 3], 3)
    assert slabs.shape == (2, 3, 4, 5)
    assert torch.equal(slabs[1], v[0, 0, 2:5]) and torch.equal(slabs[0, 0], v[0, 0, 0])  # border replicated
    assert torch.equal(cut_slabs(v, 4, [2], 3)[0], v[0, 0].permute(2, 0, 1)[1:4])


def test_moved_slabs_are_the_slabs_of_the_moved_volume():
    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(1, 1, 9, 9, 9, generator=gen)
    for axis in (2, 3, 4):  # no motion: exactly cut_slabs, border slices replicated as there
        points = slab_points(volume.shape[2:], axis, [0, 4, 8], 5)
        still = torch.stack([moved_slabs(volume, p, torch.zeros(3), torch.zeros(3)) for p in points])
        assert torch.allclose(still, cut_slabs(volume, axis, [0, 4, 8], 5), atol=1e-6)
    points = slab_points(volume.shape[2:], 2, [4], 5)[0]  # the 5 middle axial slices
    # a shift of 2 voxels along x: the values 2 voxels on, zeros past the edge
    shifted = moved_slabs(volume, points, torch.zeros(3), torch.tensor([0.0, 0.0, 2.0]))
    assert torch.allclose(shifted[..., :-2], volume[0, 0, 2:7, :, 2:], atol=1e-6) and shifted[..., -2:].abs().max() == 0
    # a quarter turn about the z axis through the centre: the volume turned in its (y, x) plane
    turned = moved_slabs(volume, points, torch.tensor([torch.pi / 2, 0.0, 0.0]), torch.zeros(3))
    assert torch.allclose(turned, torch.rot90(volume[0, 0, 2:7], -1, dims=(1, 2)), atol=1e-5)


def test_batches_with_motions():
    plain = SyntheticSubjects(TINY.modalities, size=24, spacing=8.0, batch=3).batch(5)
    source = SyntheticSubjects(TINY.modalities, size=24, spacing=8.0, batch=3, motions=3)
    s, again = source.batch(5), source.batch(5)
    assert plain.moved is None and torch.equal(s.a, plain.a) and torch.equal(s.b, plain.b)  # old runs resume exactly
    assert s.moved.shape == (3, 3, 5, 24, 24) and torch.equal(s.moved, again.moved) and s.fractions == again.fractions
    assert 0 < s.fractions[0] <= s.fractions[1] <= s.fractions[2] <= 1
    # the moved slabs are the b slabs moved: closest to them at the smallest fraction
    gaps = [float((m - s.b).abs().mean()) for m in s.moved]
    assert 0 < gaps[0] < gaps[2]


def test_basin_loss_asks_the_distance_to_grow_with_the_motion():
    fractions = (0.25, 0.5, 1.0)
    rising = torch.tensor([1.0, 2.0, 4.0, 16.0])  # log d rises by at least 2 per unit fraction
    assert float(basin_loss(rising, fractions, 2.0)) == 0.0
    assert float(basin_loss(rising, fractions, 4.0)) > 0  # not by 4
    d = torch.tensor([1.0, 3.0, 2.0, 16.0], requires_grad=True)  # 0.25 farther than 0.5
    loss = basin_loss(d, fractions, 0.0)
    assert float(loss.detach()) > 0
    loss.backward()
    assert d.grad[1] > 0 and d.grad[2] < 0  # descent lowers d(0.25) and raises d(0.5)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    config = _tiny_run(lambda_basin=1.0)
    model = Translator(TINY)
    s = SyntheticSubjects(TINY.modalities, size=24, spacing=8.0, batch=4, motions=3).batch(0)
    assert "basin" not in generator_losses(model, s, _tiny_run())[1]  # off by default
    assert "basin" in generator_losses(model, s, config)[1]
    params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(15):
        loss, info = generator_losses(model, s, config)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(generator_losses(model, s, config)[0].detach()) < 0.7 * first
    model.eval()
    with torch.no_grad():
        d = motion_distances(model.content, model.content(s.a), model.content(s.b), s).tolist()
    in_order = [d[i] < d[j] for i in range(4) for j in range(i + 1, 4)]
    figures = validate(model, [s], margin=0.0)
    assert figures["ordered"] == pytest.approx(sum(in_order) / 6)
    assert figures["basin"] == pytest.approx(float(basin_loss(torch.tensor(d), s.fractions, 0.0)), abs=1e-6)


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    straight = tmp_path / "straight.pt"
    train(_tiny_run(steps=3), straight, progress=False)
    model, doc = load_encoder(straight)
    torch.manual_seed(0)
    initial = Translator(EncoderConfig(**doc["model_config"])).eval()  # the run's seed-0 initial weights
    trained = checkpoint.load(tmp_path / "straight.pt.ckpt", "regode.encoder", "encoder")["model"]
    x = torch.rand(1, 5, 24, 24)
    assert not torch.equal(model.content(x), initial.content(x))  # the file holds the trained weights
    initial.load_state_dict(trained)  # and they are the step-3 checkpoint's, tensor for tensor
    assert torch.equal(model.content(x), initial.content(x)) and model.config == initial.config
    assert "optimizer" not in doc and doc["step"] == 3 and [h["step"] for h in doc["history"]] == [0, 1, 2, 3]
    assert (tmp_path / "straight.pt.samples" / "step_000003.png").stat().st_size > 1000
    # killed after 2 steps, resumed: the same weights as the straight run
    part = tmp_path / "part.pt"
    train(_tiny_run(steps=2), part, progress=False)
    train(_tiny_run(), part, resume=True, progress=False, steps=3)
    steps = [json.loads(line)["step"] for line in (tmp_path / "part.pt.log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # the resumed run did step 3 only
    resumed, _ = load_encoder(part)
    a, b = model.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_foreign_and_corrupt_checkpoints_are_refused(tmp_path):
    from regode.odenet.config import ModelConfig, TrainConfig
    from regode.odenet.model import MSODENet

    msodenet = tmp_path / "rigid.pt"
    checkpoint.save(msodenet, "regode.msodenet", MSODENet(ModelConfig()), TrainConfig(), 0, 0.0, [])
    with pytest.raises(RegodeError, match="not a regode encoder checkpoint"):
        load_encoder(msodenet)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RegodeError, match="cannot read checkpoint"):
        load_encoder(tmp_path / "bad.pt")
    with pytest.raises(RegodeError, match="not found"):
        load_encoder(tmp_path / "missing.pt")


def test_train_cli_encoder(tmp_path):
    out = tmp_path / "enc.pt"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "encoder",
            "--synthetic",
            "--out",
            str(out),
            "--steps",
            "2",
            "--size",
            "24",
            "--spacing",
            "8",
            "--width",
            "4",
            "--batch",
            "2",
            "--validate-every",
            "1",
            "--quiet",
            "--lambda-basin",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "content ratio" in result.output and "in order of misalignment" in result.output
    model, doc = load_encoder(out)
    assert doc["train_config"]["batch"] == 2 and doc["model_config"]["spacing"] == 8.0 and model.config.width == 4
    assert doc["train_config"]["lambda_basin"] == 0.5
    log = [json.loads(line) for line in (tmp_path / "enc.pt.log.jsonl").read_text().splitlines()]
    assert all("basin" in r for r in log[1:])  # the term was trained
    result = runner.invoke(
        app, ["train", "--model", "rigid", "--out", str(tmp_path / "r.pt"), "--lambda-basin", "1", "--quiet"]
    )
    assert result.exit_code == 1 and "--lambda-basin" in result.output
    result = runner.invoke(
        app, ["train", "--model", "encoder", "--out", str(tmp_path / "x.pt"), "--label-map", str(out), "--quiet"]
    )
    assert result.exit_code == 1 and "--label-map" in result.output


# ------------------------------------------------------------------------------------- E3D
@pytest.fixture(scope="module")
def head():
    volumes, _ = SyntheticSubjects(("t1", "t2"), size=32, spacing=6.0).subject(0, torch.Generator().manual_seed(3))
    return volumes[0:1], volumes[1:2]


def test_e3d_is_deterministic_for_a_seed(head):
    t1, t2 = head
    torch.manual_seed(0)
    encoder = Translator(TINY).eval().content
    p0, p1, p2 = slice_positions(t1, 4, seed=0), slice_positions(t1, 4, seed=0), slice_positions(t1, 4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=False)) and not all(
        torch.equal(a, b) for a, b in zip(p0, p2, strict=False)
    )
    assert all(len(p) == 4 for p in p0)
    f0, f1 = e3d(encoder, t2, p0, 5), e3d(encoder, t2, p1, 5)
    assert all(torch.equal(a, b) for a, b in zip(f0, f1, strict=False)) and f0[0].shape == (4, 8, 16, 16)
    with torch.no_grad():
        assert float(content_distance(encoder, t2, t1, 4, seed=0)) == float(
            content_distance(encoder, t2, t1, 4, seed=0)
        )
        assert float(content_distance(encoder, t1, t1, 4)) == 0.0
    moved = t2.clone().requires_grad_(True)
    content_distance(encoder, moved, t1, 4).backward()
    assert moved.grad.abs().sum() > 0  # differentiable: usable as L_sim
    dense = content_volume(encoder, t1, 5)
    assert dense.shape == (1, 8, 32, 32, 32) and torch.isfinite(dense).all()


def test_mind_is_contrast_scale_invariant_and_sees_misalignment(head):
    t1, _ = head
    assert torch.allclose(mind(t1), mind(3 * t1 + 0.0), atol=1e-5)
    shifted = t1.roll(2, -1)
    assert float((mind(shifted) - mind(t1)).square().mean()) > 0.01


def test_basin_of_a_curve():
    x = np.arange(-5, 6)
    assert basin(x, (x - 1.0) ** 2) == (1.0, -5.0, 5.0)
    # a local bump at -4 ends the basin there
    y = np.abs(x).astype(float)
    y[1] = 10  # x = -4
    assert basin(x, y) == (0.0, -4.0, 5.0)


def test_capture_curves_have_their_minimum_at_the_truth(head):
    """On a synthetic T1/T2 pair MI and MIND are lowest at the true alignment (the content metric
    needs a trained encoder: measured by benchmarks/capture_range.py)."""
    from regode.preprocess import head_center
    from regode.synthetic import training_grid

    t1, t2 = head
    grid = training_grid(32, 6.0)
    torch.manual_seed(0)
    metrics = Metrics(t1, Translator(TINY).eval(), slices_per_axis=4)
    center = head_center(t1, grid)
    angles = [-20.0, -10.0, 0.0, 10.0, 20.0]
    for name in ("mi", "mind"):
        curve = [metrics(name, moved_by(t2, grid, center, 2, angle_deg=a)) for a in angles]
        assert basin(angles, curve)[0] == 0.0, (name, curve)
    shifted = [metrics("mi", moved_by(t2, grid, center, 0, shift_mm=s)) for s in (-12.0, 0.0, 12.0)]
    assert shifted[1] < min(shifted[0], shifted[2])


def test_msodenet_trains_with_the_content_similarity(tmp_path):
    from regode.odenet.model import load_model

    encoder = tmp_path / "enc.pt"
    train(
        _tiny_run(steps=1, model=EncoderConfig(width=4, content=8, style=4, blocks=1, spacing=6.0)),
        encoder,
        progress=False,
    )
    out = tmp_path / "rigid.pt"
    base = [
        "train",
        "--model",
        "rigid",
        "--synthetic",
        "--out",
        str(out),
        "--steps",
        "2",
        "--size",
        "24",
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
        "--quiet",
        "--similarity",
        "content",
    ]
    result = runner.invoke(app, base + ["--spacing", "6", "--encoder", str(encoder)])
    assert result.exit_code == 0, result.output
    _, doc = load_model(out, "rigid")
    assert doc["train_config"]["similarity"] == "content" and doc["train_config"]["encoder"] == str(encoder)
    log = [json.loads(line) for line in (tmp_path / "rigid.pt.log.jsonl").read_text().splitlines()]
    sims = [r["sim"] for r in log if "sim" in r]
    assert len(sims) == 2 and all(s >= 0 for s in sims)  # a distance, not minus MI
    result = runner.invoke(app, base + ["--spacing", "4", "--encoder", str(encoder), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and "trained on 6 mm slices" in result.output
    result = runner.invoke(app, base[:-1] + ["psnr", "--out", str(tmp_path / "y.pt")])
    assert result.exit_code == 2 and "psnr" in result.output  # not one of the --similarity choices
