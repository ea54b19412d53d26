"""``regode fit-field``: per-pair neural-field registration (NIR)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEVICES
from ..nir.config import ACTIVATIONS, ENCODINGS, METRICS, PRESETS, SAMPLERS, SOLVERS, FieldConfig, FitConfig
from .app import FIXED_HELP, app, choices, user_errors

Sampler = choices("Sampler", SAMPLERS)
Metric = choices("Metric", METRICS)
Encoding = choices("Encoding", ENCODINGS)
Activation = choices("Activation", ACTIVATIONS)
Solver = choices("Solver", SOLVERS)
Device = choices("Device", DEVICES)
Preset = choices("Preset", tuple(PRESETS))
F, N = FitConfig, FieldConfig  # the defaults below are theirs


@app.command("fit-field")
@user_errors
def fit_field(
    fixed: Annotated[Path, typer.Option("--fixed", "-f", help=FIXED_HELP)],
    moving: Annotated[Path, typer.Option("--moving", "-m", help="Moving image.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output prefix: PREFIX1Warp.nii.gz, PREFIX1InverseWarp.nii.gz, PREFIX0GenericAffine.mat, PREFIXWarped.nii.gz, ...")],
    preset: Annotated[Optional[Preset], typer.Option("--preset", help="Settings for a kind of pair, where no option says otherwise: inter-subject = --affine --center-of-mass --lambda-grad 1 --lambda-fold 100 --metric auto, and a fine level at the fixed image's spacing (at least 1 mm).")] = None,
    diffeomorphic: Annotated[bool, typer.Option("--diffeomorphic", help="Fit a stationary velocity field and integrate it (no folding).")] = F.diffeomorphic,
    sampler: Annotated[Sampler, typer.Option("--sampler", help="Coordinates per step: strided grid, mini-patches, or both (two fields).")] = Sampler(F.sampler),
    metric: Annotated[Metric, typer.Option("--metric", help="mi: any contrasts; content: learned content features (any contrasts); mind: MIND descriptors (any contrasts); ncc: local NCC, same contrast; mse; auto: ncc for one contrast, mi across (judged on the pair after the affine stage).")] = Metric(F.metric),
    encoder: Annotated[Optional[Path], typer.Option("--encoder", help="--metric content: encoder from `regode train --model encoder` (default: the shipped weights/encoder.pt).")] = None,
    iterations: Annotated[int, typer.Option("--iterations", help="Adam steps of the (first) field.")] = F.iterations,
    coarse_iterations: Annotated[int, typer.Option("--coarse-iterations", help="Adam steps before --iterations on a 2x coarser lattice and smoothed images.")] = F.coarse_iterations,
    refine_iterations: Annotated[int, typer.Option("--refine-iterations", help="Adam steps of the second field (hybrid sampler).")] = F.refine_iterations,
    fixed_mask: Annotated[Optional[Path], typer.Option("--fixed-mask", help="Only fixed points inside this image's non-zero voxels count (ANTs' -x): lesions, partial fields of view.")] = None,
    moving_mask: Annotated[Optional[Path], typer.Option("--moving-mask", help="Only points mapped inside this image's non-zero voxels count.")] = None,
    initial_transform: Annotated[Optional[list[str]], typer.Option("--initial-transform", help="Linear transform file(s) to start from, e.g. register's PREFIX0GenericAffine.mat (-t order; '[f.mat,1]' inverts).")] = None,
    affine: Annotated[bool, typer.Option("--affine", help="First fit an affine map (on the coarse lattice, then frozen), then the field: for pairs not yet linearly aligned; written to PREFIX0GenericAffine.mat.")] = F.affine,
    center_of_mass: Annotated[bool, typer.Option("--center-of-mass", help="Start from the translation between the head centres.")] = F.center_of_mass,
    moving_labels: Annotated[Optional[Path], typer.Option("--moving-labels", help="Label image on the moving grid, warped with label interpolation.")] = None,
    encoding: Annotated[Encoding, typer.Option("--encoding", help="grid: multi-resolution feature grids (fast); fourier: Fourier features; none: raw coordinates (with --activation sine: SIREN).")] = Encoding(N.encoding),
    activation: Annotated[Activation, typer.Option("--activation", help="MLP activation (sine: SIREN initialisation).")] = Activation(N.activation),
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = F.lr,
    lambda_fold: Annotated[float, typer.Option(help="Weight of the folding penalty mean(relu(0.1 - det J)).")] = F.lambda_fold,
    lambda_grad: Annotated[float, typer.Option(help="Weight of the gradient energy mean ||J - I||^2.")] = F.lambda_grad,
    lambda_bending: Annotated[float, typer.Option(help="Weight of the bending energy (second differences, per mm^2).")] = F.lambda_bending,
    ncc_window: Annotated[int, typer.Option(help="Local NCC window (lattice points).")] = F.ncc_window,
    spacing: Annotated[float, typer.Option("--spacing", help="Working grid spacing (mm).")] = F.spacing,
    fine_spacing: Annotated[float, typer.Option("--fine-spacing", help="Fit the last field on for --fine-iterations steps on images at this spacing (mm); 0: no fine level.")] = F.fine_spacing,
    fine_iterations: Annotated[int, typer.Option("--fine-iterations", help="Adam steps of the fine level.")] = F.fine_iterations,
    stride: Annotated[int, typer.Option("--stride", help="Downsize sampler: one point in STRIDE per axis.")] = F.stride,
    patch_size: Annotated[int, typer.Option(help="Mini-patch edge (points).")] = F.patch_size,
    patches: Annotated[int, typer.Option(help="Mini-patches per step.")] = F.patches,
    solver: Annotated[Solver, typer.Option("--solver", help="Velocity integration (--diffeomorphic).")] = Solver(F.solver),
    integration_steps: Annotated[int, typer.Option(help="Fixed integration steps over [0, 1] (--diffeomorphic).")] = F.integration_steps,
    device: Annotated[Device, typer.Option("--device", help="auto, cpu or cuda.")] = Device(F.device),
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    qc: Annotated[bool, typer.Option("--qc/--no-qc", help="Write PREFIXqc.png (planes before and after) and QC figures in PREFIXregode.json.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial fields and the samplers.")] = F.seed,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Register MOVING to FIXED by fitting a neural field to this pair (NIR); writes ANTs-named outputs."""
    from ..pipeline import fit_files

    config = config_of(**locals())
    doc = fit_files(fixed, moving, out, config, moving_labels, progress=not quiet, qc=qc)
    t = doc["timings_s"]
    print(f"fitted {moving} to {fixed} ({sampler.value} sampler, {metric.value}) in {t['wall']:.2f} s "
          f"(fit {t['total']:.2f} s); outputs {out}*")


def config_of(diffeomorphic, sampler, metric, encoder, iterations, coarse_iterations, refine_iterations, initial_transform, affine,
              center_of_mass, encoding, activation, lr, lambda_fold, lambda_grad, lambda_bending, ncc_window, spacing, stride, patch_size,
              patches, solver, integration_steps, device, threads, seed, fixed_mask=None, moving_mask=None, preset=None,
              fine_spacing=F.fine_spacing, fine_iterations=F.fine_iterations, **_) -> FitConfig:
    """The FitConfig of the command's parsed options (``regode cohort`` parses a row's too); a
    ``preset`` sets its fields where the options left FitConfig's defaults."""
    value = lambda choice: getattr(choice, "value", choice)  # noqa: E731
    config = FitConfig(
        diffeomorphic=diffeomorphic, sampler=value(sampler), metric=value(metric), encoder=str(encoder) if encoder else None,
        iterations=iterations, coarse_iterations=coarse_iterations, refine_iterations=refine_iterations, lr=lr, spacing=spacing,
        stride=stride, patch_size=patch_size, patches=patches, ncc_window=ncc_window, lambda_fold=lambda_fold, lambda_grad=lambda_grad,
        lambda_bending=lambda_bending, solver=value(solver), integration_steps=integration_steps,
        network=FieldConfig(encoding=value(encoding), activation=value(activation)), affine=affine, center_of_mass=center_of_mass,
        initial_transform=tuple(initial_transform or ()), device=value(device), threads=threads, seed=seed,
        fixed_mask=str(fixed_mask) if fixed_mask else None, moving_mask=str(moving_mask) if moving_mask else None,
        fine_spacing=fine_spacing, fine_iterations=fine_iterations)
    settings = PRESETS.get(value(preset), {}) if preset else {}
    return replace(config, **{name: setting for name, setting in settings.items() if getattr(config, name) == getattr(FitConfig, name)})
