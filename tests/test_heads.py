"""Heads and brains: ``regode brain-extract`` (deepbet) on a synthetic head with a skull, in any
orientation; ``register --skull-strip`` from a head to a brain-only template and back, with
transforms that apply to the head; atlas labels back to the head through the inverse; a cohort
row of each kind; deepbet missing."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regode import brain
from regode.anatomy import draw_subject, render_subject
from regode.cli.app import run
from regode.grid import Grid
from regode.io import read_image, write_image

T1_MEANS = torch.tensor([0.0, 0.15, 0.5, 0.8, 0.1, 0.7])
"""background, CSF, GM, WM, bone, scalp: a T1-weighted contrast."""


def _subject(seed: int, skull: bool):
    """A synthetic subject (3 mm, 64^3: 192 mm across) as a T1 image, and its true brain mask."""
    gen = torch.Generator().manual_seed(seed)
    subject = draw_subject(gen, spacing=3.0, size=64, max_sigma=4.0, skull=skull)
    image = render_subject(subject, gen, partial_fov=0.0, means=T1_MEANS)
    return image, (subject.probs[:, 1:4].sum(1, keepdim=True) > 0.5).float(), subject.grid


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A head with a skull and a brain-only subject (the template), written as files."""
    folder = tmp_path_factory.mktemp("heads")
    head, head_brain, grid = _subject(0, skull=True)
    template, template_brain, tgrid = _subject(1, skull=False)
    write_image(head, grid, folder / "head.nii.gz")
    write_image(head_brain, grid, folder / "true_brain.nii.gz", np.uint8)
    write_image(template, tgrid, folder / "template.nii.gz")
    return folder


def _array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_deepbets_networks_load_from_its_installed_wheel():
    for path in brain._model_files():
        assert Path(path).is_file()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = torch.jit.load(path, map_location="cpu")
        assert sum(p.numel() for p in network.parameters()) > 100_000


def test_brain_extract_writes_ants_names_on_the_heads_grid(heads, capfd):
    assert run(["brain-extract", "-i", str(heads / "head.nii.gz"), "-o", str(heads / "bx_"), "--threads", "2"]) == 0
    assert "extracted the brain" in capfd.readouterr().out
    head = sitk.ReadImage(str(heads / "head.nii.gz"))
    for name in ("BrainExtractionBrain.nii.gz", "BrainExtractionMask.nii.gz"):
        out = sitk.ReadImage(str(heads / f"bx_{name}"))
        assert out.GetSize() == head.GetSize() and np.allclose(out.GetOrigin(), head.GetOrigin())
        assert np.allclose(out.GetDirection(), head.GetDirection()) and np.allclose(out.GetSpacing(), head.GetSpacing())
    mask = _array(heads / "bx_BrainExtractionMask.nii.gz")
    assert set(np.unique(mask)) == {0, 1} and _dice(mask, _array(heads / "true_brain.nii.gz")) > 0.9
    brain_image = _array(heads / "bx_BrainExtractionBrain.nii.gz")
    assert (brain_image[mask == 0] == 0).all() and np.allclose(
        brain_image[mask == 1], _array(heads / "head.nii.gz")[mask == 1]
    )
    record = json.loads((heads / "bx_regode.json").read_text())
    assert record["brain_volume_ml"] == pytest.approx(mask.sum() * 27 / 1000) and record["head"] is True
    assert (heads / "bx_qc.png").read_bytes()[:4] == b"\x89PNG"


def test_the_mask_follows_the_head_in_any_orientation(heads):
    """The same head stored with its axes permuted and flipped (the same world): the mask is the
    same world region, voxel for voxel."""
    image = read_image(heads / "head.nii.gz")
    array = image.data[0, 0].numpy()  # [k, j, i]
    # new voxel axes: i' = -j, j' = k, k' = i (a permutation with a flip)
    turned = np.ascontiguousarray(np.transpose(array, (2, 0, 1))[:, :, ::-1])  # [k'=i, j'=k, i'=-j]
    d = image.grid.direction_matrix
    columns = np.stack([-d[:, 1], d[:, 2], d[:, 0]], 1)
    size = image.grid.size
    origin = image.grid.index_to_world(np.array([0, size[1] - 1, 0]))
    grid = Grid((size[1], size[2], size[0]), (3.0, 3.0, 3.0), tuple(origin), tuple(columns.ravel()))
    write_image(turned, grid, heads / "turned.nii.gz")
    mask = brain.extract(read_image(heads / "head.nii.gz"))[0, 0].numpy()
    turned_mask = brain.extract(read_image(heads / "turned.nii.gz"))[0, 0].numpy()
    np.testing.assert_array_equal(np.transpose(mask, (2, 0, 1))[:, :, ::-1], turned_mask)


def test_a_lower_threshold_gives_a_larger_brain_and_a_bad_one_is_refused(heads, capfd):
    image = read_image(heads / "head.nii.gz")
    assert brain.extract(image, 0.1).sum() >= brain.extract(image, 0.9).sum() > 0
    assert run(["brain-extract", "-i", str(heads / "head.nii.gz"), "-o", str(heads / "t_"), "--threshold", "0"]) == 1
    assert "regode: error: --threshold" in capfd.readouterr().err


def test_without_deepbet_one_error_line_says_how_to_install_it(heads, monkeypatch, capfd):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepbet" else real(name, *a))
    brain._extractor.cache_clear()
    try:
        assert run(["brain-extract", "-i", str(heads / "head.nii.gz"), "-o", str(heads / "none_")]) == 1
    finally:
        brain._extractor.cache_clear()
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["regode: error: brain extraction needs deepbet, which is not installed: pip install deepbet"]
    assert not list(heads.glob("none_*"))


REGISTER = ["--model", "rigid", "--threads", "2", "--seed", "0"]


def test_a_head_to_a_brain_template_is_registered_brain_to_brain(heads):
    """auto: the fixed image is named a brain and the moving one looks like a head: its brain is
    extracted and registered; the outputs hold the head, its brain and both masks."""
    prefix = heads / "h2t_"
    args = ["register", "-f", str(heads / "template.nii.gz"), "-m", str(heads / "head.nii.gz"), "-o", str(prefix)]
    assert run([*args, "--fixed-is-brain", *REGISTER]) == 0
    record = json.loads(Path(f"{prefix}regode.json").read_text())
    assert record["skull_strip"]["moving"]["extracted"] and record["skull_strip"]["moving"]["head"]
    template, head = (sitk.ReadImage(str(heads / n)) for n in ("template.nii.gz", "head.nii.gz"))
    for name, on in (
        ("Warped", template),
        ("WarpedBrain", template),
        ("WarpedBrainMask", template),
        ("BrainMask", head),
    ):
        out = sitk.ReadImage(f"{prefix}{name}.nii.gz")
        assert out.GetSize() == on.GetSize() and np.allclose(out.GetOrigin(), on.GetOrigin()), name
    warped, warped_brain, warped_mask = (
        _array(f"{prefix}{n}.nii.gz") for n in ("Warped", "WarpedBrain", "WarpedBrainMask")
    )
    assert set(np.unique(warped_mask)) <= {0, 1}
    assert (warped_brain[warped_mask == 0] == 0).all() and np.allclose(
        warped_brain[warped_mask == 1], warped[warped_mask == 1]
    )
    assert (warped[warped_mask == 0] > 0.05).sum() > 0.2 * warped_mask.sum()  # the head, skull and scalp included
    # the transform applies to the head: warping it with regode warp gives PREFIXWarped.nii.gz
    assert run(["warp", "-i", str(heads / "head.nii.gz"), "-r", str(heads / "template.nii.gz"), "-t",
                f"{prefix}0GenericAffine.mat", "-o", str(heads / "rewarped.nii.gz")]) == 0  # fmt: skip
    np.testing.assert_allclose(_array(heads / "rewarped.nii.gz"), warped, atol=1e-4)
    # the brain lands on the template's brain
    assert _dice(warped_mask, _array(heads / "template.nii.gz") > 0.05) > 0.8
    # no: the head as it is; the extraction's outputs of the earlier run at this prefix are removed
    assert run([*args, "--fixed-is-brain", "--skull-strip", "no", *REGISTER]) == 0
    assert not Path(f"{prefix}BrainMask.nii.gz").exists() and not Path(f"{prefix}WarpedBrain.nii.gz").exists()
    assert json.loads(Path(f"{prefix}regode.json").read_text())["skull_strip"] == {
        "sides_considered": [],
        "seconds": pytest.approx(0, abs=1),
    }


def test_auto_leaves_an_extracted_brain_as_it_is(heads):
    """auto with a moving image that is already a brain: extracted, judged not a head, registered
    as it is, no brain outputs."""
    prefix = heads / "b2t_"
    assert run(["brain-extract", "-i", str(heads / "head.nii.gz"), "-o", str(heads / "bb_"), "--no-qc"]) == 0
    brain_file = heads / "bb_BrainExtractionBrain.nii.gz"
    assert run(["register", "-f", str(heads / "template.nii.gz"), "-m", str(brain_file), "-o", str(prefix),
                "--fixed-is-brain", *REGISTER]) == 0  # fmt: skip
    record = json.loads(Path(f"{prefix}regode.json").read_text())["skull_strip"]
    assert record["moving"]["head"] is False and record["moving"]["extracted"] is False
    assert not Path(f"{prefix}BrainMask.nii.gz").exists()


def test_a_brain_template_to_a_head_and_its_labels_back_to_the_head(heads):
    """The other way (the head fixed, the template moving, named a brain): the head's brain mask,
    the head in template space; and labels in template space taken to the head through the
    inverse of an affine+bspline registration stay labels, on the head's grid."""
    prefix = heads / "t2h_"
    assert run(["register", "-f", str(heads / "head.nii.gz"), "-m", str(heads / "template.nii.gz"), "-o", str(prefix),
                "--moving-is-brain", *REGISTER]) == 0  # fmt: skip
    head = sitk.ReadImage(str(heads / "head.nii.gz"))
    assert sitk.ReadImage(f"{prefix}FixedBrainMask.nii.gz").GetSize() == head.GetSize()
    template = sitk.ReadImage(str(heads / "template.nii.gz"))
    assert sitk.ReadImage(f"{prefix}InverseWarpedBrainMask.nii.gz").GetSize() == template.GetSize()
    # labels back: the head moving, the template fixed, labels of the template to the head
    prefix = heads / "lab_"
    assert run(["register", "-f", str(heads / "template.nii.gz"), "-m", str(heads / "head.nii.gz"), "-o", str(prefix),
                "--fixed-is-brain", "--model", "affine+bspline", "--threads", "2"]) == 0  # fmt: skip
    labels = (_array(heads / "template.nii.gz") > 0.3).astype(np.int16) + (_array(heads / "template.nii.gz") > 0.6)
    write_image(labels, Grid.from_sitk(template), heads / "template_labels.nii.gz", np.int16)
    assert run(["warp", "-i", str(heads / "template_labels.nii.gz"), "-r", str(heads / "head.nii.gz"),
                "-t", f"[{prefix}0GenericAffine.mat,1]", "-t", f"{prefix}1InverseWarp.nii.gz", "-n", "label",
                "-o", str(heads / "labels_native.nii.gz")]) == 0  # fmt: skip
    native = sitk.ReadImage(str(heads / "labels_native.nii.gz"))
    assert native.GetSize() == head.GetSize() and np.allclose(native.GetOrigin(), head.GetOrigin())
    values = _array(heads / "labels_native.nii.gz")
    assert set(np.unique(values)) == {0, 1, 2}
    # the labelled region lies on the head's brain
    assert _dice(values > 0, _array(f"{prefix}BrainMask.nii.gz")) > 0.7


def test_cohort_rows_extract_a_brain_and_register_a_head(heads):
    manifest = heads / "manifest.csv"
    manifest.write_text(
        "id,fixed,moving,command,options\n"
        "bx,,head.nii.gz,brain-extract,\n"
        "reg,template.nii.gz,head.nii.gz,register,--fixed-is-brain --model rigid\n"
    )
    out = heads / "cohort"
    assert run(["cohort", str(manifest), "--out", str(out), "--workers", "1", "--threads", "2", "-q"]) == 0
    summary = {row["id"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}
    assert {row["status"] for row in summary.values()} == {"done"}
    assert summary["bx"]["brain_volume_ml"] > 500 and (out / "bx" / "bx_BrainExtractionMask.nii.gz").is_file()
    assert (out / "reg" / "reg_WarpedBrainMask.nii.gz").is_file()
    # the row's mask is the one the library makes
    expected = brain.extract(read_image(heads / "head.nii.gz"))[0, 0].numpy()
    np.testing.assert_array_equal(_array(out / "bx" / "bx_BrainExtractionMask.nii.gz"), expected)


def test_the_template_tissue_classes_are_labels_on_its_grid():
    from regode.templates import read_template, tissue_classes

    classes, t1 = tissue_classes("mni152"), read_template("mni152")
    assert classes.grid.same_as(t1.grid) and set(torch.unique(classes.data).tolist()) == {0, 1, 2, 3}
    assert bool(((classes.data > 0) == (t1.data > 0)).all())
