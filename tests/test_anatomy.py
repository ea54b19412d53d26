"""Brain-like synthetic subjects from the MNI152 template's tissue maps (regode.anatomy)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from regode import anatomy
from regode.cli import app
from regode.sampling import sample

SPACING, SIZE = 4.0, 48


def test_atlas_is_six_tissues_of_a_brain():
    probs, grid = anatomy.atlas(SPACING)
    assert probs.shape[1] == len(anatomy.TISSUES) == 6 and tuple(probs.shape[2:]) == grid.shape
    torch.testing.assert_close(probs.sum(1), torch.ones_like(probs[:, 0]))
    ml = probs[0].flatten(1).sum(1) * SPACING**3 / 1000
    brain = float(ml[1:4].sum())  # CSF + GM + WM of the template
    assert 1200 < brain < 2200 and float(ml[3]) > 400 and float(ml[2]) > 500 and float(ml[4]) > 100


def test_subjects_are_seeded_and_differ_between_seeds():
    a = anatomy.draw_subject(torch.Generator().manual_seed(3), SPACING, SIZE)
    b = anatomy.draw_subject(torch.Generator().manual_seed(3), SPACING, SIZE)
    c = anatomy.draw_subject(torch.Generator().manual_seed(4), SPACING, SIZE)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.velocity, b.velocity)
    assert float((a.probs - c.probs).abs().mean()) > 1e-3
    gen = torch.Generator().manual_seed(0)
    one, two = anatomy.render_subject(a, gen), anatomy.render_subject(a, gen)
    assert one.shape == (1, 1, SIZE, SIZE, SIZE) and 0 <= float(one.min()) and float(one.max()) <= 1
    assert float((one - two).abs().mean()) > 0.02  # two contrasts of one subject


def test_skull_off_leaves_nothing_outside_the_brain():
    gen = torch.Generator().manual_seed(1)
    stripped = anatomy.draw_subject(gen, SPACING, SIZE, skull=False)
    image = anatomy.render_subject(stripped, gen, partial_fov=0.0)
    skull = stripped.probs[:, 4:].sum(1, keepdim=True) > 0.9
    brain = stripped.probs[:, 1:4].sum(1, keepdim=True) > 0.9
    far = stripped.probs[:, :1] > 0.999  # background away from the head
    assert abs(float(image[skull].mean()) - float(image[far].mean())) < 0.03  # the skull looks like background
    assert float(image[brain].mean()) > float(image[skull].mean()) + 0.1


def test_inter_subject_truth_maps_one_subject_onto_the_other():
    """The known fixed -> moving mapping: a fixed point and its image in the moving subject are the
    same template point (to a fraction of a millimetre), and the moving subject's tissues sampled
    through it match the fixed subject's far better than without it (the rest is interpolation)."""
    fixed, moving, displacement = anatomy.inter_subject_pair(torch.Generator().manual_seed(2), SPACING, SIZE)
    points = fixed.grid.world_points(dtype=torch.float32)[None]
    through = sample(moving.probs, moving.grid, points + displacement.movedim(1, -1))
    plain = sample(moving.probs, moving.grid, points)
    brain = fixed.probs[:, 1:4].sum(1, keepdim=True).expand_as(fixed.probs) > 0.5
    after = float((through - fixed.probs)[brain].abs().mean())
    before = float((plain - fixed.probs)[brain].abs().mean())
    assert float(displacement.norm(dim=1).max()) > 2 and after < 0.6 * before
    moved = points.double() + displacement.movedim(1, -1).double()
    gap = (moving.to_template(moved) - fixed.to_template(points.double())).norm(dim=-1)[0]
    assert (
        float(gap[fixed.probs[0, 1:4].sum(0) > 0.5].max()) < 0.3
    )  # in the brain (the flows stop at the grid's border)


def test_train_on_the_brain_generator(tmp_path):
    out = tmp_path / "a.pt"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            "affine",
            "--generator",
            "brain",
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
            "--width",
            "4",
            "--validate-every",
            "2",
            "--checkpoint-every",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = torch.load(out, weights_only=True)
    assert doc["train_config"]["generator"] == "brain" and doc["step"] == 2
    refused = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            "affine",
            "--generator",
            "brain",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "b.pt"),
        ],
    )
    assert refused.exit_code != 0 and "not both" in refused.output
