"""The package as installed: every package of regode/ listed for setuptools, and the shipped weights
(the top-level weights/ folder) found through importlib.resources in the editable install and in a
wheel installed into a fresh virtual environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ("rigid", "affine", "bspline", "dense", "encoder")


def test_every_package_is_listed_for_setuptools():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "regode").rglob("__init__.py")}
    assert listed == found | {"regode.weights"}


def test_the_weights_are_package_data_in_the_editable_install():
    from regode.checkpoint import weights_dir
    from regode.odenet.model import load_model

    assert weights_dir().resolve() == (ROOT / "weights").resolve()
    for name in MODELS:
        assert (weights_dir() / f"{name}.pt").is_file() and (weights_dir() / f"{name}.md").is_file()
    assert load_model(weights_dir() / "rigid.pt")[0].config.kind == "rigid"


def test_a_wheel_in_a_fresh_environment_ships_the_weights(tmp_path):
    """``pip wheel .``, installed (without dependencies) into a new virtual environment: its
    ``regode.weights`` holds the same model files and cards, and a model file from it loads."""
    source = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*cache")
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 and "Could not" in built.stderr:
        pytest.skip(f"no build backend could be had: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("regode-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    code = "from importlib.resources import files; print(files('regode.weights'))"
    where = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    folder = Path(where.stdout.strip())
    assert folder.is_relative_to(tmp_path / "env")
    for name in MODELS:
        for suffix in (".pt", ".md"):
            assert (folder / f"{name}{suffix}").read_bytes() == (ROOT / "weights" / f"{name}{suffix}").read_bytes()
    from regode.odenet.model import load_model

    assert load_model(folder / "bspline.pt")[0].config.kind == "bspline"
