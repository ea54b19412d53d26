"""``regode register``: MS-ODENet registration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEVICES
from ..odenet.config import FINE_METRICS, MODELS, RegisterConfig
from .app import FIXED_HELP, app, choices, user_errors

Model = choices("Model", MODELS)
Device = choices("Device", DEVICES)
Metric = choices("Metric", FINE_METRICS)


@app.command()
@user_errors
def register(
    fixed: Annotated[Path, typer.Option("--fixed", "-f", help=FIXED_HELP)],
    moving: Annotated[Path, typer.Option("--moving", "-m", help="Moving image.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output prefix: PREFIXWarped.nii.gz, PREFIX0GenericAffine.mat, PREFIX1Warp.nii.gz, ...")],
    model: Annotated[Model, typer.Option("--model", help="MS-ODENet stages, run in order: linear kinds (rigid, affine) first, then a deformable one (bspline, dense); between subjects or to a template: affine+dense.")] = Model(RegisterConfig.model),
    moving_labels: Annotated[Optional[Path], typer.Option("--moving-labels", help="Label image on the moving grid, warped with label interpolation.")] = None,
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", help="Model file from `regode train` replacing the shipped one of its kind (repeatable).")] = None,
    fixed_mask: Annotated[Optional[Path], typer.Option("--fixed-mask", help="Only fixed points inside this image's non-zero voxels count (ANTs' -x): lesions, partial fields of view.")] = None,
    moving_mask: Annotated[Optional[Path], typer.Option("--moving-mask", help="Only points mapped inside this image's non-zero voxels count.")] = None,
    initial_transform: Annotated[Optional[list[str]], typer.Option("--initial-transform", help="Linear transform file(s) to start from (fixed -> moving, -t order); '[f.mat,1]' inverts.")] = None,
    no_center_of_mass: Annotated[bool, typer.Option("--no-center-of-mass", help="Start from the identity (no translation between the head centres, no principal axes).")] = False,
    no_principal_axes: Annotated[bool, typer.Option("--no-principal-axes", help="Models that start with a rigid or affine stage: start from the translation between the head centres only, not from the best principal-axes alignment.")] = False,
    polish: Annotated[bool, typer.Option("--polish/--no-polish", help="After each network, optimise its result by mutual information (a few dozen Adam steps at 2 mm; for dense a 10 mm B-spline correction of its field); --no-polish runs the networks alone.")] = RegisterConfig.polish,
    network_levels: Annotated[Optional[int], typer.Option("--network-levels", help="Pyramid levels each network integrates, coarse first (the shipped models: 8, 4 and 2 mm). Default with the polish: all but the finest (the polish runs there, about ten times cheaper per step), the rigid network its coarsest only (its polish's 4 mm steps do that level's work); all with --no-polish.")] = None,
    fine_spacing: Annotated[Optional[float], typer.Option("--fine-spacing", help="Refine the last deformable stage on images at this spacing (mm; 0: no). Default: the fixed image's spacing (at least 1 mm) for the affine+bspline/dense cascades, none for the other models.")] = None,
    metric: Annotated[Metric, typer.Option("--metric", help="The fine level's similarity: auto (local NCC for one contrast, MI across contrasts, judged on the pair), mi or ncc.")] = Metric(RegisterConfig.metric),
    device: Annotated[Device, typer.Option("--device", help="auto, cpu or cuda.")] = Device(RegisterConfig.device),
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    qc: Annotated[bool, typer.Option("--qc/--no-qc", help="Write PREFIXqc.png (planes before and after) and QC figures in PREFIXregode.json.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the polish's sample lattices; the networks are deterministic).")] = RegisterConfig.seed,
) -> None:
    """Register MOVING to FIXED with MS-ODENet; writes ANTs-named transforms and images."""
    from ..pipeline import register_files

    config = config_of(model, checkpoint, initial_transform, no_center_of_mass, no_principal_axes, polish, device, threads, seed,
                       fixed_mask, moving_mask, fine_spacing, metric, network_levels)
    doc = register_files(fixed, moving, out, config, moving_labels, qc=qc)
    t = doc["timings_s"]
    print(f"registered {moving} to {fixed} with {model.value} in {t['wall']:.2f} s (model {t['total']:.2f} s); "
          f"outputs {out}*  NFE {doc['nfe']}")


def config_of(model, checkpoint, initial_transform, no_center_of_mass, no_principal_axes, polish, device, threads, seed,
              fixed_mask=None, moving_mask=None, fine_spacing=None, metric=RegisterConfig.metric, network_levels=None, **_) -> RegisterConfig:
    """The RegisterConfig of the command's parsed options (``regode cohort`` parses a row's too)."""
    return RegisterConfig(model=getattr(model, "value", model), checkpoints=tuple(str(p) for p in checkpoint or ()),
                          center_of_mass=not no_center_of_mass, principal_axes=not no_principal_axes, polish=polish,
                          initial_transform=tuple(initial_transform or ()), device=getattr(device, "value", device), threads=threads,
                          seed=seed, fixed_mask=str(fixed_mask) if fixed_mask else None, moving_mask=str(moving_mask) if moving_mask else None,
                          fine_spacing=fine_spacing, metric=getattr(metric, "value", metric), network_levels=network_levels)
