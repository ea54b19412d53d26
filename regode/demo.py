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
from .synthetic import random_bspline
from .templates import read_template, template_file
from .transforms import Affine, Compose
from .warp import resample

T2_LIKE = {"csf": 0.9, "gm": 0.5, "wm": 0.25}
"""the second contrast's mean intensity per tissue (a T2-like image: fluid bright, white matter dark)."""


def brain_pair(seed: int) -> tuple[Grid, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MNI ICBM152 2009 brain (as nilearn ships it: brain-extracted, 1 mm) in two contrasts:
    its T1, and a T2-like image made from its tissue maps (CSF = brain - GM - WM) with a little
    seeded noise; and its tissue labels (1 CSF, 2 GM, 3 WM: the most probable tissue in the
    brain). Returns ``(grid, t1, t2-like, labels)``, images ``[1, 1, nz, ny, nx]``."""
    t1 = read_template("mni152")
    gm, wm = (read_image(template_file("mni152", t)).data.float() / 255.0 for t in ("gm", "wm"))
    brain = (t1.data > 0).float()
    csf = (brain - gm - wm).clamp(min=0) * brain
    tissues = torch.cat([csf, gm, wm], 1)
    # the most probable tissue (the first on a tie), as argmax over the channels would give it, without
    # argmax's slow strided pass over [1, 3, ...]
    most = torch.where(wm > torch.maximum(csf, gm), 3, torch.where(gm > csf, 2, 1))
    labels = torch.where(brain > 0, most, 0).to(torch.int16)
    means = torch.tensor([T2_LIKE["csf"], T2_LIKE["gm"], T2_LIKE["wm"]]).reshape(1, 3, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed + 1)
    noise = 0.02 * torch.randn(brain.shape, generator=gen) * brain
    second = ((tissues * means).sum(1, keepdim=True) + noise).clamp(min=0)
    return t1.grid, t1.data.float() / 255.0, second, labels


def run_demo(
    out: Path | None, seed: int = 0, model: str = "rigid", threads: int | None = None, checkpoints: tuple = ()
) -> dict:
    """Take the MNI152 brain in two contrasts (:func:`brain_pair`), move the second by a known
    rotation + translation (+ a smooth warp for deformable models), register it back with
    ``regode register`` (``checkpoints``: model files, as ``--checkpoint``) and compare the result
    with the truth: RMSE(phi) over the brain and the tissues' Dice."""
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
    grid, fixed, source, labels = brain_pair(seed)
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
    table = Table(
        title=f"regode demo: {model} registration of the MNI152 brain, T1 against a T2-like contrast, known motion"
    )
    table.add_column("")
    table.add_column("RMSE(phi) over the brain (mm)", justify="right")
    table.add_column("mean Dice, CSF / GM / WM (%)", justify="right")
    table.add_row("before", f"{results['rmse_phi_before']:.2f}", f"{results['dice_before']:.1f}")
    table.add_row("after", f"{results['rmse_phi_after']:.2f}", f"{results['dice_after']:.1f}")
    console.print(table)
    console.print(f"registered in {results['seconds']:.1f} s; files in {folder}")
    console.print(f"the QC picture (planes before and after): {folder / 'demo_qc.png'}")
    return results
