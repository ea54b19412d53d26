"""The public API (regode/__init__.py, regode.api): what scripts and the benchmark call."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_public_api_is_lazy_and_complete():
    """``import regode`` loads no torch; every name of the API resolves on first use, to the
    library's own objects; unknown names fail as for any module."""
    code = ("import sys, regode; before = 'torch' in sys.modules; "
            "names = [getattr(regode, n) for n in regode.API]; "
            "from regode.odenet.register import register_images; from regode.pipeline import register_files; "
            "assert regode.register_files is register_files and regode.RegisterConfig.__name__ == 'RegisterConfig'; "
            "print(before, len(names))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", str(len(__import__("regode").API))]
    with pytest.raises(AttributeError):
        __import__("regode").no_such_thing


def test_public_api_registers_and_warps_images_in_memory():
    """regode.fit_field and regode.warp on a generated pair: the registration lowers the error."""
    import numpy as np
    import torch

    import regode
    from regode.synthetic import phantom_labels, random_bspline, render

    grid = regode.Grid((40, 44, 36), (3.0, 3.0, 3.0), (-60.0, -66.0, -54.0))
    labels = phantom_labels(grid, 12, 2)
    fixed = regode.Image(render(labels, grid, 1), grid, np.float32)
    truth = random_bspline(grid, 30.0, 3.0, seed=5)
    moving = regode.Image(regode.warp(regode.Image(render(labels, grid, 1), grid, np.float32), grid, truth.inverse(grid)), grid, np.float32)
    result = regode.fit_field(fixed, moving, regode.FitConfig(iterations=20, coarse_iterations=20, spacing=3.0, metric="ncc"))
    back = regode.warp(moving, grid, result.transform)
    mask = labels[0, 0] > 0
    before = float((moving.data - fixed.data)[0, 0][mask].abs().mean())
    after = float((back - fixed.data)[0, 0][mask].abs().mean())
    assert after < 0.8 * before and isinstance(result.transform, torch.nn.Module)
