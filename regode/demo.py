"""``regode demo``: register a generated two-contrast pair with known motion and print the error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .bench.metrics import mean_dice
from .bench.motion import inverse_on
from .errors import RegodeError
from .grid import Grid
from .io import load_transform_chain, read_image, write_image
from .odenet.config import RegisterConfig
from .odenet.kinds import KINDS
from .pipeline import register_files
from .rotations import euler_matrix
from .synthetic import phantom_labels, random_bspline, render
from .transforms import Affine, Compose
from .warp import resample


def run_demo(
    out: Path | None, seed: int = 0, model: str = "rigid", threads: int | None = None, checkpoints: tuple = ()
) -> dict:
    """Generate an oblique, anisotropic 30-label phantom seen in two contrasts, move the second by a
    known rotation + translation (+ a smooth warp for deformable models), register it back with
    ``regode register`` (``checkpoints``: model files, as ``--checkpoint``) and compare the
    result with the truth."""
    console = Console()
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="regode-demo-"))
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "demo_regode.json").exists():
        raise RegodeError(
            f"--out {folder} holds other files, which the demo's would replace: give a new or empty folder "
            "(or one an earlier demo wrote)"
        )
    if folder.exists() and not folder.is_dir():
        raise RegodeError(f"--out {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    rot = euler_matrix(torch.tensor([0.3, -0.2, 0.25], dtype=torch.float64)).numpy()
    grid = Grid((120, 140, 60), (1.2, 1.0, 2.5), (0.0, 0.0, 0.0), tuple(rot.ravel()))
    grid = Grid(grid.size, grid.spacing, tuple(-grid.center), grid.direction)  # centred on the world origin
    labels = phantom_labels(grid, 30, seed)
    fixed, source = render(labels, grid, seed), render(labels, grid, seed + 7)  # two contrasts

    gen = torch.Generator().manual_seed(seed)
    angles = (torch.rand(1, 3, generator=gen, dtype=torch.float64) * 2 - 1) * np.deg2rad(25)
    shift = (torch.rand(1, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 10
    rigid = Affine(euler_matrix(angles), shift, torch.as_tensor(grid.center)[None])
    config = RegisterConfig(model=model, checkpoints=tuple(checkpoints), threads=threads, seed=seed)
    deformable = not KINDS[config.stages[-1]].linear
    truth = Compose([rigid, random_bspline(grid, 40.0, 4.0, seed)]) if deformable else Compose([rigid])
    inverse = inverse_on(truth, grid)
    write_image(fixed, grid, folder / "fixed.nii.gz")
    write_image(resample(source, grid, grid, inverse), grid, folder / "moving.nii.gz")
    write_image(labels, grid, folder / "fixed_labels.nii.gz", np.int16)
    write_image(resample(labels.float(), grid, grid, inverse, "label"), grid, folder / "moving_labels.nii.gz", np.int16)

    doc = register_files(
        folder / "fixed.nii.gz", folder / "moving.nii.gz", folder / "demo_", config, folder / "moving_labels.nii.gz"
    )
    specs = [str(folder / "demo_1Warp.nii.gz")] if deformable else []
    found = load_transform_chain(specs + [str(folder / "demo_0GenericAffine.mat")])

    mask = (labels[0, 0] > 0).numpy()
    with torch.no_grad():
        true_disp = truth.displacement(grid)[0].numpy()
        found_disp = found.displacement(grid)[0].numpy()
    rmse = lambda d: float(np.sqrt((d**2).sum(0)[mask].mean()))  # noqa: E731
    lab = labels[0, 0].numpy()
    results = {
        "rmse_phi_before": rmse(true_disp),
        "rmse_phi_after": rmse(found_disp - true_disp),
        "dice_before": mean_dice(read_image(folder / "moving_labels.nii.gz").data[0, 0].numpy(), lab),
        "dice_after": mean_dice(read_image(folder / "demo_WarpedLabels.nii.gz").data[0, 0].numpy(), lab),
        "seconds": doc["timings_s"]["wall"],
    }
    table = Table(title=f"regode demo: {model} registration of a two-contrast phantom with known motion")
    table.add_column("")
    table.add_column("RMSE(phi) over the brain (mm)", justify="right")
    table.add_column("mean Dice, 29 labels (%)", justify="right")
    table.add_row("before", f"{results['rmse_phi_before']:.2f}", f"{results['dice_before']:.1f}")
    table.add_row("after", f"{results['rmse_phi_after']:.2f}", f"{results['dice_after']:.1f}")
    console.print(table)
    console.print(f"registered in {results['seconds']:.1f} s; files in {folder}")
    return results
