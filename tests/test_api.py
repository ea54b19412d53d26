"""The public API (regode/__init__.py, regode.api): what scripts and the benchmark call."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_public_api_is_lazy_and_complete():
    """``import regode`` loads no torch; every name of the API resolves on first use, to the
    library's own objects; unknown names fail as for any module."""
    code = (
        "import sys, regode; before = 'torch' in sys.modules; "
        "names = [getattr(regode, n) for n in regode.API]; "
        "from regode.odenet.register import register_images; from regode.pipeline import register_files; "
        "assert regode.register_files is register_files and regode.RegisterConfig.__name__ == 'RegisterConfig'; "
        "print(before, len(names))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", str(len(__import__("regode").API))]
    with pytest.raises(AttributeError):
        __import__("regode").no_such_thing  # noqa: B018  (the attribute access is the test)


def test_public_api_registers_and_warps_images_in_memory():
    """regode.fit_field and regode.apply_transforms on a generated pair with a known warp: the
    fitted mapping is closer to the truth than the identity, and so is the image warped with it."""
    import numpy as np
    import torch

    import regode
    from regode.synthetic import phantom_labels, random_bspline, render

    grid = regode.Grid((40, 44, 36), (3.0, 3.0, 3.0), (-60.0, -66.0, -54.0))
    labels = phantom_labels(grid, 12, 2)
    fixed = regode.Image(render(labels, grid, 1, noise=0.0), grid, np.float32)
    truth = random_bspline(grid, 36.0, 3.0, seed=5)
    moving = regode.Image(regode.apply_transforms(fixed, grid, truth.inverse(grid)), grid, np.float32)
    result = regode.fit_field(fixed, moving, regode.FitConfig(spacing=3.0, stride=2, metric="mse"))
    mask = (labels[0, 0] > 0).numpy()
    with torch.no_grad():
        true = truth.displacement(grid)[0].numpy()
        found = result.transform.displacement(grid)[0].numpy()
    rmse = lambda d: float(np.sqrt((d**2).sum(0)[mask].mean()))  # noqa: E731
    assert rmse(found - true) < 0.6 * rmse(true)
    # warped by the fit, the moving image is closer to the moving image warped by the truth (both
    # interpolated twice, so blur does not decide) than it was
    ideal = regode.apply_transforms(moving, grid, truth)
    back = regode.apply_transforms(moving, grid, result.transform)
    assert float((back - ideal).abs()[0, 0][mask].mean()) < 0.7 * float((moving.data - ideal).abs()[0, 0][mask].mean())


def test_an_empty_weights_variable_means_the_shipped_weights(monkeypatch, tmp_path):
    """``REGODE_WEIGHTS=`` (set, empty) is the shipped folder, not the current one; a folder given is used."""
    from pathlib import Path

    import regode
    from regode.checkpoint import weights_dir

    shipped = Path(regode.__file__).resolve().parents[1] / "weights"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REGODE_WEIGHTS", "")
    assert weights_dir() == shipped and (weights_dir() / "rigid.pt").is_file()
    monkeypatch.setenv("REGODE_WEIGHTS", str(tmp_path))
    assert weights_dir() == tmp_path
