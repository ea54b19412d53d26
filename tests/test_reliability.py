"""Bad input and faults, as a user meets them: every refusal is one ``regode: error:``
line and a non-zero exit code, no traceback, no new file in the output folder and every input
unchanged, byte for byte. The commands run in-process through ``regode.cli.app.run``, the function
the console script calls."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regode.cli.app import run
from regode.grid import Grid
from regode.io import write_image
from regode.synthetic import phantom_labels, render

GRID = Grid((16, 18, 14), (2.0, 2.0, 2.0), (-16.0, -18.0, -14.0))


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(args: list[str], folder: Path, capfd, code: int = 1, words: str | None = None) -> str:
    """Run a command that must be refused; check the one line, the exit code, that no file in
    ``folder`` (where the inputs and outputs lie) appeared, vanished or changed; return the line."""
    before = _files(folder)
    result = run([str(a) for a in args])
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert result == code, (result, err)
    assert len(lines) == 1 and lines[0].startswith("regode: error:"), err
    assert "Traceback" not in err + out
    if words is not None:
        assert words in lines[0], lines[0]
    assert _files(folder) == before, "files appeared, vanished or changed"
    return lines[0]


@pytest.fixture
def pair(tmp_path):
    labels = phantom_labels(GRID, 6, 3)
    write_image(render(labels, GRID, 1), GRID, tmp_path / "fixed.nii.gz")
    write_image(render(labels, GRID, 2), GRID, tmp_path / "moving.nii.gz")
    write_image(labels, GRID, tmp_path / "labels.nii.gz", np.int16)
    sitk.WriteTransform(sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.05, (1.0, 2.0, 0.0)), str(tmp_path / "start.mat"))
    return tmp_path


def _fix(folder):
    return ["-f", folder / "fixed.nii.gz", "-m", folder / "moving.nii.gz"]


# ---------------------------------------------------------------- 1. outputs that are inputs
@pytest.mark.parametrize(
    "command,output",
    [
        (["warp", "-i", "{d}/moving.nii.gz", "-r", "{d}/fixed.nii.gz", "-o", "{d}/moving.nii.gz"], "moving.nii.gz"),
        (["warp", "-i", "{d}/moving.nii.gz", "-r", "{d}/fixed.nii.gz", "-o", "{d}/fixed.nii.gz"], "fixed.nii.gz"),
        (
            [
                "warp",
                "-i",
                "{d}/moving.nii.gz",
                "-r",
                "{d}/fixed.nii.gz",
                "-t",
                "{d}/start.mat",
                "-o",
                "{d}/./start.mat",
            ],
            "start.mat",
        ),
        (
            ["register", "-f", "{d}/fixed.nii.gz", "-m", "{d}/movingWarped.nii.gz", "-o", "{d}/moving"],
            "movingWarped.nii.gz",
        ),
        (
            ["register", "-f", "{d}/fixedWarped.nii.gz", "-m", "{d}/moving.nii.gz", "-o", "{d}/fixed"],
            "fixedWarped.nii.gz",
        ),
        (
            [
                "register",
                "-f",
                "{d}/fixed.nii.gz",
                "-m",
                "{d}/moving.nii.gz",
                "--moving-labels",
                "{d}/xWarpedLabels.nii.gz",
                "-o",
                "{d}/x",
            ],
            "xWarpedLabels",
        ),
        (
            [
                "register",
                "-f",
                "{d}/fixed.nii.gz",
                "-m",
                "{d}/moving.nii.gz",
                "--initial-transform",
                "{d}/s0GenericAffine.mat",
                "-o",
                "{d}/s",
            ],
            "GenericAffine",
        ),
        (
            ["fit-field", "-f", "{d}/fixed.nii.gz", "-m", "{d}/mInverseWarped.nii.gz", "-o", "{d}/m", "-q"],
            "InverseWarped",
        ),
        (
            [
                "fit-field",
                "-f",
                "{d}/fixed.nii.gz",
                "-m",
                "{d}/moving.nii.gz",
                "--initial-transform",
                "[{d}/f0GenericAffine.mat,1]",
                "-o",
                "{d}/f",
                "-q",
            ],
            "GenericAffine",
        ),
    ],
)
def test_an_output_never_replaces_an_input(pair, capfd, command, output):
    for name in ("movingWarped.nii.gz", "fixedWarped.nii.gz", "xWarpedLabels.nii.gz", "mInverseWarped.nii.gz"):
        (pair / name).write_bytes((pair / ("labels.nii.gz" if "Labels" in name else "moving.nii.gz")).read_bytes())
    for name in ("s0GenericAffine.mat", "f0GenericAffine.mat"):
        (pair / name).write_bytes((pair / "start.mat").read_bytes())
    args = [a.replace("{d}", str(pair)) for a in command]
    line = refused(args, pair, capfd, words="is the input")
    assert output.split(".")[0] in line


def test_an_output_reached_through_a_link_is_the_input(pair, capfd):
    os.symlink(pair / "moving.nii.gz", pair / "link.nii.gz")
    refused(
        ["warp", "-i", pair / "moving.nii.gz", "-r", pair / "fixed.nii.gz", "-o", pair / "link.nii.gz"],
        pair,
        capfd,
        words="is the input",
    )
    os.link(pair / "fixed.nii.gz", pair / "hard.nii.gz")
    refused(
        ["warp", "-i", pair / "moving.nii.gz", "-r", pair / "fixed.nii.gz", "-o", pair / "hard.nii.gz"],
        pair,
        capfd,
        words="is the input",
    )


def test_train_never_writes_over_its_label_map(pair, capfd):
    refused(
        [
            "train",
            "--model",
            "rigid",
            "--out",
            pair / "labels.nii.gz",
            "--label-map",
            pair / "labels.nii.gz",
            "--steps",
            "1",
        ],
        pair,
        capfd,
        words="is the input",
    )


# ---------------------------------------------------------------- 2. silently wrong results
def _damaged(folder: Path, name: str = "fixed.nii.gz") -> Path:
    raw = bytearray((folder / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the compressed stream: only the CRC tells
    out = folder / f"damaged_{name}"
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("command", ["warp", "register", "fit-field"])
def test_a_damaged_gzip_stream_is_refused(pair, capfd, command):
    bad = _damaged(pair)
    args = {
        "warp": ["warp", "-i", bad, "-r", pair / "fixed.nii.gz", "-o", pair / "out.nii.gz"],
        "register": ["register", "-f", bad, "-m", pair / "moving.nii.gz", "-o", pair / "out_"],
        "fit-field": ["fit-field", "-f", bad, "-m", pair / "moving.nii.gz", "-o", pair / "out_", "-q"],
    }[command]
    refused(args, pair, capfd, words=str(bad))


def _wide_labels(folder: Path) -> tuple[Path, set]:
    labels = sitk.ReadImage(str(folder / "labels.nii.gz"))
    wide = sitk.Cast(labels, sitk.sitkInt32) + 100_000_000
    wide = sitk.Mask(wide, sitk.Cast(labels > 0, sitk.sitkUInt8))
    sitk.WriteImage(wide, str(folder / "wide.nii.gz"))
    return folder / "wide.nii.gz", set(np.unique(sitk.GetArrayFromImage(wide)).tolist())


@pytest.mark.parametrize("interp", ["label", "nearest"])
def test_labels_beyond_float32_stay_exact_in_warp(pair, capfd, interp):
    wide, values = _wide_labels(pair)
    assert (
        run(
            [
                "warp",
                "-i",
                str(wide),
                "-r",
                str(pair / "fixed.nii.gz"),
                "-t",
                str(pair / "start.mat"),
                "-o",
                str(pair / "w.nii.gz"),
                "-n",
                interp,
            ]
        )
        == 0
    )
    out = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(pair / "w.nii.gz")))).tolist())
    assert out <= values and len(out) > 3, out - values


def test_labels_beyond_float32_stay_exact_in_register(pair, capfd):
    wide, values = _wide_labels(pair)
    assert (
        run(
            [
                "fit-field",
                *map(str, _fix(pair)),
                "--moving-labels",
                str(wide),
                "-o",
                str(pair / "r_"),
                "-q",
                "--iterations",
                "3",
                "--coarse-iterations",
                "0",
            ]
        )
        == 0
    )
    out = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(pair / "r_WarpedLabels.nii.gz")))).tolist())
    assert out <= values and len(out) > 3, out - values


@pytest.mark.parametrize(
    "command,words",
    [(["register", "--no-center-of-mass"], "--no-center-of-mass"), (["fit-field", "-q"], "--center-of-mass")],
)
def test_images_that_do_not_meet_are_refused_with_the_fix(pair, capfd, command, words):
    far = sitk.ReadImage(str(pair / "moving.nii.gz"))
    far.SetOrigin((1000.0, 0.0, 0.0))
    sitk.WriteImage(far, str(pair / "far.nii.gz"))
    refused(
        [*command, "-f", pair / "fixed.nii.gz", "-m", pair / "far.nii.gz", "-o", pair / "o_"], pair, capfd, words=words
    )


# ---------------------------------------------------------------- 3. tracebacks become one line
def _truncated(folder: Path, name: str) -> Path:
    raw = (folder / "fixed.nii.gz").read_bytes() if name.endswith(".gz") else None
    if name.endswith(".nii"):
        sitk.WriteImage(sitk.ReadImage(str(folder / "fixed.nii.gz")), str(folder / "full.nii"))
        raw = (folder / "full.nii").read_bytes()
        (folder / "full.nii").unlink()
    if name.endswith(".mha"):
        sitk.WriteImage(sitk.ReadImage(str(folder / "fixed.nii.gz")), str(folder / "full.mha"))
        raw = (folder / "full.mha").read_bytes()
        (folder / "full.mha").unlink()
    (folder / name).write_bytes(raw[: len(raw) * 2 // 3])
    return folder / name


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii", "cut.mha"])
def test_a_truncated_file_is_named(pair, capfd, name):
    bad = _truncated(pair, name)
    refused(["warp", "-i", bad, "-r", pair / "fixed.nii.gz", "-o", pair / "out.nii.gz"], pair, capfd, words=str(bad))


@pytest.mark.parametrize("shape", [(10000, 10000, 10000), (700, 700, 700)])
def test_an_impossible_header_is_refused_before_allocating(pair, capfd, shape):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + bytes(1000)
    (pair / "huge.nii.gz").write_bytes(gzip.compress(raw))
    refused(
        ["warp", "-i", pair / "huge.nii.gz", "-r", pair / "fixed.nii.gz", "-o", pair / "out.nii.gz"],
        pair,
        capfd,
        words="huge.nii.gz",
    )


def test_a_reference_grid_too_large_to_warp_onto_is_refused_before_allocating(pair, capfd):
    """A reference is read for its grid only: a header declaring 10000^3 voxels is refused with
    its name before the warped image is allocated (not a memory-allocation traceback)."""
    header = nib.Nifti1Header()
    header.set_data_shape((10000, 10000, 10000))
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), code=1)
    (pair / "huge.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(1000)))
    line = refused(
        ["warp", "-i", pair / "moving.nii.gz", "-r", pair / "huge.nii.gz", "-o", pair / "out.nii.gz"],
        pair,
        capfd,
        words="reference image",
    )
    assert "huge.nii.gz declares 10000x10000x10000 voxels" in line and "to warp onto" in line


def test_an_image_too_small_for_the_model_names_the_minimum(pair, capfd):
    small = Grid((5, 5, 5), (1.0, 1.0, 1.0))
    write_image(render(phantom_labels(small, 3, 1), small, 1), small, pair / "tiny.nii.gz")
    refused(
        ["register", "-f", pair / "tiny.nii.gz", "-m", pair / "moving.nii.gz", "-o", pair / "t_"],
        pair,
        capfd,
        words="too small",
    )


def test_a_singular_matrix_cannot_be_inverted(pair, capfd):
    flat = sitk.AffineTransform(3)
    flat.SetMatrix((1, 0, 0, 0, 1, 0, 0, 0, 0))
    sitk.WriteTransform(flat, str(pair / "flat.mat"))
    refused(
        [
            "warp",
            "-i",
            pair / "moving.nii.gz",
            "-r",
            pair / "fixed.nii.gz",
            "-t",
            f"[{pair / 'flat.mat'},1]",
            "-o",
            pair / "o.nii.gz",
        ],
        pair,
        capfd,
        words="singular",
    )


@pytest.mark.parametrize(
    "output",
    [
        "/proc/regode_out.nii.gz",
        "/sys/regode_out.nii.gz",
        "{d}/" + "x" * 300 + ".nii.gz",
        "{d}/missing/out.nii.gz",
        "{d}",
    ],
)
def test_an_unwritable_output_is_refused_first(pair, capfd, output):
    refused(
        ["warp", "-i", pair / "moving.nii.gz", "-r", pair / "fixed.nii.gz", "-o", output.replace("{d}", str(pair))],
        pair,
        capfd,
        words="cannot write",
    )


@pytest.mark.parametrize(
    "args,code,words",
    [
        (
            ["warp", "-i", "{d}/moving.nii.gz", "-r", "{d}/fixed.nii.gz", "-o", "{d}/o.nii.gz", "--threads", "-1"],
            1,
            "--threads",
        ),
        (
            ["register", "-f", "{d}/fixed.nii.gz", "-m", "{d}/moving.nii.gz", "-o", "{d}/o_", "--threads", "-1"],
            1,
            "--threads",
        ),
        (
            ["fit-field", "-f", "{d}/fixed.nii.gz", "-m", "{d}/moving.nii.gz", "-o", "{d}/o_", "--threads", "-1"],
            1,
            "--threads",
        ),
        (["train", "--model", "rigid", "--out", "{d}/m.pt", "--threads", "-1"], 2, "--threads"),
        (["demo", "--out", "{d}/demo", "--threads", "-1"], 1, "--threads"),
        (["bench", "--data", "{d}", "--threads", "-1"], 1, "--threads"),
        (["bench", "--data", "{d}", "--resolution", "-2"], 1, "--resolution"),
        (["train", "--model", "rigid", "--out", "{d}/m.pt", "--spacing", "0"], 1, "--spacing"),
        (["train", "--model", "rigid", "--out", "{d}/m.pt", "--lr", "-1"], 1, "--lr"),
        (["train", "--model", "encoder", "--out", "{d}/m.pt", "--steps", "0"], 1, "--steps"),
        (["fit-field", "-f", "{d}/fixed.nii.gz", "-m", "{d}/moving.nii.gz", "-o", "{d}/o_", "--lr", "nan"], 1, "--lr"),
        (
            ["register", "-f", "{d}/fixed.nii.gz", "-m", "{d}/moving.nii.gz", "-o", "{d}/o_", "--model", "dense+rigid"],
            2,
            "--model",
        ),
        (["register", "-m", "{d}/moving.nii.gz", "-o", "{d}/o_"], 1, "missing --fixed"),
        (["warp", "-i", "{d}/nothing.nii.gz", "-r", "{d}/fixed.nii.gz", "-o", "{d}/o.nii.gz"], 1, "nothing.nii.gz"),
        (
            ["warp", "-i", "{d}/moving.nii.gz", "-r", "{d}/fixed.nii.gz", "-o", "{d}/o.nii.gz", "-t", "{d}/none.mat"],
            1,
            "none.mat",
        ),
    ],
)
def test_option_values_are_checked_the_same_way(pair, capfd, args, code, words):
    refused([a.replace("{d}", str(pair)) for a in args], pair, capfd, code=code, words=words)


# ---------------------------------------------------------------- 4. nothing before the error line
def test_a_pickled_checkpoint_gets_one_line_not_torch_warnings(pair, capfd):
    torch.save({"format": "regode.msodenet", "payload": Path("x")}, pair / "evil.pt")  # a pickled object
    refused(
        ["register", *_fix(pair), "-o", pair / "e_", "--model", "rigid", "--checkpoint", pair / "evil.pt"],
        pair,
        capfd,
        words="pickle",
    )


def test_a_sheared_header_prints_no_itk_warning(pair, capfd):
    data = np.asarray(nib.load(str(pair / "moving.nii.gz")).dataobj)
    sheared = np.array([[2.0, 0.3, 0, -16], [0, 2.0, 0, -18], [0, 0, 2.0, -14], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, sheared)
    image.set_qform(
        np.array([[2.0, 0, 0, -16], [0, 2.0, 0, -18], [0, 0, 2.0, -14], [0, 0, 0, 1]]), code=1
    )  # ITK falls back to it
    image.set_sform(sheared, code=2)
    nib.save(image, str(pair / "sheared.nii.gz"))
    result = run(
        ["warp", "-i", str(pair / "sheared.nii.gz"), "-r", str(pair / "fixed.nii.gz"), "-o", str(pair / "s.nii.gz")]
    )
    _, err = capfd.readouterr()
    assert result == 0 and err.strip() == "", err  # ITK would print "WARNING: ... unexpected scales in sform"


def test_a_foreign_checkpoint_is_one_line(pair, capfd):
    (pair / "noise.pt").write_bytes(os.urandom(2000))
    refused(
        ["register", *_fix(pair), "-o", pair / "n_", "--checkpoint", pair / "noise.pt"], pair, capfd, words="noise.pt"
    )


# ---------------------------------------------------------------- 5. nothing left after a kill
def test_sigterm_while_writing_leaves_nothing(pair, capfd, monkeypatch):
    from regode import pipeline

    real, calls = pipeline.resample_many, []

    def terminated(*args, **kwargs):  # the second call, the inverse image: the first outputs are being written
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's kill; handled here, in the main thread
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "resample_many", terminated)
    before = _files(pair)
    assert run(["register", *map(str, _fix(pair)), "-o", str(pair / "k_")]) == 128 + signal.SIGTERM
    capfd.readouterr()
    assert _files(pair) == before and not list(pair.glob(".regode-*"))


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(pair, capfd):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    host = socket.gethostname().replace("-", "_")
    stale = pair / f".regode-{host}-{gone.stdout.strip()}-abcd"
    stale.mkdir()
    (stale / "half.nii.gz").write_bytes(b"partial")
    mine = pair / f".regode-{host}-{os.getpid()}-live"  # a running process's folder is left alone
    mine.mkdir()
    elsewhere = pair / f".regode-othernode-{gone.stdout.strip()}-abcd"  # another node's, on a shared file system
    elsewhere.mkdir()
    assert (
        run(["warp", "-i", str(pair / "moving.nii.gz"), "-r", str(pair / "fixed.nii.gz"), "-o", str(pair / "w.nii.gz")])
        == 0
    )
    assert not stale.exists() and mine.exists() and elsewhere.exists() and (pair / "w.nii.gz").exists()


def test_sigterm_in_a_real_process_exits_143_and_cleans_up(pair):
    """The console script itself: SIGTERM during the registration unwinds like Ctrl-C."""
    marker = pair / "started"
    code = (
        f"import pathlib, time; from regode.cli import main; import regode.api; pathlib.Path({str(marker)!r}).touch(); "
        "main()"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "fit-field",
            *map(str, _fix(pair)),
            "-o",
            str(pair / "t_"),
            "-q",
            "--iterations",
            "100000",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(1.5)  # main() has installed its handler and the fit runs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert not list(pair.glob("t_*")) and not list(pair.glob(".regode-*"))


# ---------------------------------------------------------------- 6. transform files of other tools
def _tfm(folder: Path, name: str, transforms: list[tuple[str, str, str]]) -> Path:
    lines = ["#Insight Transform File V1.0"]
    for i, (kind, params, fixed) in enumerate(transforms):
        lines += [f"#Transform {i}", f"Transform: {kind}", f"Parameters: {params}", f"FixedParameters: {fixed}"]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def test_a_matrix_offset_transform_is_read_as_itk_reads_it(pair):
    from regode.io import load_transform

    path = _tfm(
        pair, "mo.tfm", [("MatrixOffsetTransformBase_double_3_3", "0.98 0.1 0 -0.1 0.99 0.02 0 0 1.01 1 2 3", "5 -4 2")]
    )
    ours, itk = load_transform(path), sitk.ReadTransform(str(path))
    points = np.array([[0.0, 0, 0], [10, -20, 30], [-7, 4, 12]])
    expected = np.array([itk.TransformPoint(tuple(p)) for p in points])
    np.testing.assert_allclose(ours(torch.as_tensor(points)[None])[0].numpy(), expected, atol=1e-9)


def test_a_list_of_transforms_is_refused_not_cut_to_its_first(pair, capfd):
    rows = [("MatrixOffsetTransformBase_double_3_3", f"1 0 0 0 1 0 0 0 1 {i} 0 0", "0 0 0") for i in range(8)]
    path = _tfm(pair, "motion.tfm", rows)
    line = refused(
        ["warp", "-i", pair / "moving.nii.gz", "-r", pair / "fixed.nii.gz", "-t", path, "-o", pair / "o.nii.gz"],
        pair,
        capfd,
        words="list of 8 transforms",
    )
    assert "WARNING" not in line


def test_a_composite_transform_file_is_one_mapping(pair):
    from regode.io import load_transform

    path = _tfm(
        pair,
        "chain.tfm",
        [
            ("CompositeTransform_double_3_3", "", ""),
            ("AffineTransform_double_3_3", "0 -1 0 1 0 0 0 0 1 5 0 0", "1 2 3"),  # a quarter turn
            ("AffineTransform_double_3_3", "1 0 0 0 1.2 0 0 0 1 0 7 0", "0 0 0"),
        ],
    )
    points = np.array([[0.0, 0, 0], [10, -20, 30], [-7, 4, 12]])
    moved = load_transform(path)(torch.as_tensor(points)[None])[0].numpy()
    itk = sitk.ReadTransform(str(path))
    np.testing.assert_allclose(moved, [itk.TransformPoint(tuple(p)) for p in points], atol=1e-9)


def test_the_demo_never_writes_over_a_users_files(pair, capfd):
    """``regode demo --out DIR`` writes fixed.nii.gz and the rest: a folder of other files is refused."""
    refused(["demo", "--out", pair], pair, capfd, words="holds other files")
    refused(["demo", "--out", pair / "fixed.nii.gz"], pair, capfd, words="is a file")


def test_a_template_name_reads_nilearns_mni152(pair, capfd):
    """``mni152`` names the MNI ICBM152 2009 template that nilearn installs (no download): ``warp``
    resamples onto its 1 mm grid in MNI space, and register/fit-field read it as the fixed image."""
    pytest.importorskip("nilearn")
    from regode.templates import read_template

    template = read_template("mni152")
    assert template.grid.size == (197, 233, 189) and template.grid.spacing == (1.0, 1.0, 1.0)
    # MNI's origin (the anterior commissure) lies inside the grid, the brain around it
    index = template.grid.world_to_index(np.zeros((1, 3)))[0]
    assert all(0 < i < n for i, n in zip(index, template.grid.size, strict=False))
    assert run(["warp", "-i", str(pair / "moving.nii.gz"), "-r", "mni152", "-o", str(pair / "in_mni.nii.gz")]) == 0
    assert sitk.ReadImage(str(pair / "in_mni.nii.gz")).GetSize() == (197, 233, 189)
    refused(
        ["warp", "-i", pair / "moving.nii.gz", "-r", "mni999", "-o", pair / "x.nii.gz"], pair, capfd, words="mni999"
    )
    from regode.pipeline import output_paths, read_inputs

    fixed, moving, _ = read_inputs("mni152", pair / "moving.nii.gz", None, output_paths(pair / "t_", False, False))
    assert fixed.path == "mni152" and fixed.grid.same_as(template.grid) and moving.grid.same_as(GRID)


def test_masks_that_cannot_work_are_refused(pair, capfd):
    """An empty mask, or masks with ``register --no-polish`` (which has no polish to mask), are
    one error line, not a silently unmasked run."""
    write_image(torch.zeros(1, 1, *GRID.shape), GRID, pair / "empty.nii.gz", np.uint8)
    refused(
        ["fit-field", *_fix(pair), "-o", pair / "e_", "--fixed-mask", pair / "empty.nii.gz", "-q"],
        pair,
        capfd,
        words="no voxel",
    )
    write_image(torch.ones(1, 1, *GRID.shape), GRID, pair / "full.nii.gz", np.uint8)
    refused(
        ["register", *_fix(pair), "-o", pair / "n_", "--fixed-mask", pair / "full.nii.gz", "--no-polish"],
        pair,
        capfd,
        words="--no-polish",
    )
    refused(
        ["register", *_fix(pair), "-o", pair / "m_", "--moving-mask", pair / "nomask.nii.gz"],
        pair,
        capfd,
        words="nomask.nii.gz",
    )


def test_network_levels_beyond_the_model_are_refused(pair, capfd):
    """``--network-levels`` below one, or above a model's pyramid levels, is one error line naming
    the option (the second before any image is read)."""
    refused(
        ["register", *_fix(pair), "-o", pair / "z_", "--network-levels", "0"],
        pair,
        capfd,
        words="--network-levels must be at least 1",
    )
    refused(
        ["register", *_fix(pair), "-o", pair / "f_", "--model", "rigid+bspline", "--network-levels", "4"],
        pair,
        capfd,
        words="--network-levels 4: the rigid model has 3 pyramid levels",
    )
    # refused when the models are read, before the images: a missing image is not what it names
    refused(
        [
            "register",
            "-f",
            pair / "absent.nii.gz",
            "-m",
            pair / "moving.nii.gz",
            "-o",
            pair / "g_",
            "--network-levels",
            "4",
        ],
        pair,
        capfd,
        words="--network-levels 4",
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process states are read from /proc (Linux)")
def test_a_zombie_process_counts_as_gone_for_its_staging_folder(tmp_path):
    """A killed process that its parent has not reaped yet (a cohort's worker, whose nanny was killed
    with it) is still in the process table; its staging folder is removed all the same, while a
    running process's stays."""
    from regode.io.atomic import _alive, remove_stale

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:  # exited, not yet waited for: a zombie
        state = Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        if state == b"Z":
            break
        time.sleep(0.02)
    try:
        assert state == b"Z"
        host = socket.gethostname().replace("-", "_")
        zombie = tmp_path / f".regode-{host}-{child.pid}-abcd"
        zombie.mkdir()
        live = tmp_path / f".regode-{host}-{os.getpid()}-live"
        live.mkdir()
        assert not _alive(child.pid) and _alive(os.getpid())
        remove_stale(tmp_path)
        assert not zombie.exists() and live.exists()
    finally:
        child.wait()
