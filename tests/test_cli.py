"""The ``regode`` console script (``regode.cli:main``) in a real process: exit codes, error lines
and outputs survive its skipping of the interpreter's shutdown."""

import subprocess
import sys

import numpy as np
import SimpleITK as sitk


def _regode(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", "from regode.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_console_script_exit_codes_and_output(tmp_path):
    ok = _regode("--help")
    assert ok.returncode == 0 and "register" in ok.stdout
    missing = _regode(
        "warp",
        "-i",
        str(tmp_path / "none.nii.gz"),
        "-r",
        str(tmp_path / "none.nii.gz"),
        "-o",
        str(tmp_path / "o.nii.gz"),
    )
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "regode: error:" in missing.stderr
    assert _regode("frobnicate").returncode == 2
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    done = _regode(
        "warp", "-i", str(tmp_path / "a.nii.gz"), "-r", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "b.nii.gz")
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b.nii.gz"))), sitk.GetArrayFromImage(image), atol=1e-4
    )


def test_version_prints_the_package_version(capsys):
    from regode._version import __version__
    from regode.cli.app import run

    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"regode {__version__}"
