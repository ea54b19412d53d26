"""The ``regode`` command line: thin commands over the library (heavy imports inside them)."""

from __future__ import annotations

import enum
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

app = typer.Typer(
    name="regode",
    help="3D brain MRI registration with learned neural-ODE models and neural fields; ANTs-compatible files.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class Interp(str, enum.Enum):
    linear = "linear"
    nearest = "nearest"
    label = "label"
    bspline = "bspline"


def user_errors(fn: Callable) -> Callable:
    """Turn a RegodeError into one ``regode: error: ...`` line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import RegodeError

        try:
            return fn(*args, **kwargs)
        except RegodeError as exc:
            print(f"regode: error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@user_errors
def warp(
    input: Annotated[Path, typer.Option("--input", "-i", help="Image to resample (moving space).")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="Image whose grid the output takes (fixed space).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output image (.nii.gz, .nii, .mha, .mhd, .nrrd).")],
    transform: Annotated[
        Optional[list[str]],
        typer.Option(
            "--transform",
            "-t",
            help="Transform file, repeatable, in antsApplyTransforms order: the last -t moves the image "
            "first (e.g. -t 1Warp.nii.gz -t 0GenericAffine.mat). '[file.mat,1]' inverts a linear "
            "transform. None: identity (plain resampling).",
        ),
    ] = None,
    interp: Annotated[Interp, typer.Option("--interp", "-n", help="label = ANTs GenericLabel (no new labels).")] = Interp.linear,
    default_value: Annotated[float, typer.Option("--default-value", help="Value outside the input image.")] = 0.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
) -> None:
    """Resample an image through ITK/ANTs transforms, like antsApplyTransforms."""
    import torch

    from .io import load_transform_chain, read_grid, read_image, write_image
    from .io.atomic import check_writable
    from .warp import resample

    if threads:
        torch.set_num_threads(threads)
    check_writable(output)
    image = read_image(input, components=None, what="input image")
    ref_grid = read_grid(reference, what="reference image")
    chain = load_transform_chain(transform or [])
    if interp == Interp.label and image.data.shape[1] != 1:
        from .errors import RegodeError

        raise RegodeError(f"label interpolation needs a scalar label image, {input} has vectors")
    out = resample(image.data, image.grid, ref_grid, chain, interp.value, default_value)
    write_image(out, ref_grid, output, image.dtype)


class Task(str, enum.Enum):
    rigid = "rigid"
    deformable = "deformable"
    hybrid = "rigid+deformable"
    inter = "inter-subject"


class Contrasts(str, enum.Enum):
    different = "different"
    same = "same"


@app.command()
@user_errors
def bench(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder: DIR/<subject>/<contrast>.nii.gz (+ seg/labels).")],
    task: Annotated[Task, typer.Option("--task", help="Synthetic motion to undo, or inter-subject pairs.")] = Task.rigid,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: identity, ants:Rigid, ants:SyN, ants:SyNRA, regode:rigid, regode:rigid+bspline, ...")] = "identity",
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="Number of cases.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of cases, motion and methods.")] = 0,
    resolution: Annotated[float, typer.Option("--resolution", help="Isotropic working spacing in mm (0: native).")] = 2.0,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for every method (0: all cores).")] = 0,
    contrasts: Annotated[Contrasts, typer.Option("--contrasts", help="Synthetic-motion tasks: moving image of another contrast (multi-modal) or the same one.")] = Contrasts.different,
    max_rotation: Annotated[float, typer.Option(help="Rigid task: rotations U(-a, a) degrees per axis.")] = 75.0,
    max_translation: Annotated[float, typer.Option(help="Rigid task: translations U(-t, t) mm per axis.")] = 20.0,
    hybrid_max_rotation: Annotated[float, typer.Option(help="rigid+deformable: rotation range (degrees).")] = 40.0,
    hybrid_max_translation: Annotated[float, typer.Option(help="rigid+deformable: translation range (mm).")] = 10.0,
    bspline_sigma: Annotated[float, typer.Option(help="Deformable: control-point displacement sd (mm).")] = 8.0,
    control_spacing: Annotated[float, typer.Option(help="Deformable: B-spline control spacing (mm).")] = 40.0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output prefix for PREFIX.json and PREFIX.md (default bench_<task>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Benchmark registration methods on synthetic motion with exact ground truth (or inter-subject)."""
    import os

    threads = threads or os.cpu_count() or 1
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)  # ANTs, read when ITK starts
    import torch

    torch.set_num_threads(threads)
    from .bench.motion import MotionConfig
    from .bench.run import BenchConfig, run

    config = BenchConfig(
        data=str(data), task=task.value, methods=[m.strip() for m in methods.split(",") if m.strip()], pairs=pairs,
        seed=seed, resolution=resolution or None, threads=threads, contrasts=contrasts.value,
        motion=MotionConfig(max_rotation, max_translation, hybrid_max_rotation, hybrid_max_translation, bspline_sigma, control_spacing),
    )
    run(config, out or Path(f"bench_{task.value.replace('+', '_')}"), progress=not quiet)


class RegisterModel(str, enum.Enum):
    rigid = "rigid"
    bspline = "bspline"
    dense = "dense"
    rigid_bspline = "rigid+bspline"
    rigid_dense = "rigid+dense"


@app.command()
@user_errors
def register(
    fixed: Annotated[Path, typer.Option("--fixed", "-f", help="Fixed (reference) image.")],
    moving: Annotated[Path, typer.Option("--moving", "-m", help="Moving image.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output prefix: PREFIXWarped.nii.gz, PREFIX0GenericAffine.mat, PREFIX1Warp.nii.gz, ...")],
    model: Annotated[RegisterModel, typer.Option("--model", help="MS-ODENet stages; hybrids run rigid, then the deformable model (rigid and bspline weights ship; dense needs --checkpoint).")] = RegisterModel.rigid,
    moving_labels: Annotated[Optional[Path], typer.Option("--moving-labels", help="Label image on the moving grid, warped with label interpolation.")] = None,
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", help="Model file from `regode train` replacing the shipped one of its kind (repeatable).")] = None,
    initial_transform: Annotated[Optional[list[str]], typer.Option("--initial-transform", help="Linear transform file(s) to start from (fixed -> moving, -t order); '[f.mat,1]' inverts.")] = None,
    no_center_of_mass: Annotated[bool, typer.Option("--no-center-of-mass", help="Start from the identity (no translation between the head centres, no principal axes).")] = False,
    no_principal_axes: Annotated[bool, typer.Option("--no-principal-axes", help="Rigid models: start from the translation between the head centres only, not from the best principal-axes alignment.")] = False,
    polish: Annotated[bool, typer.Option("--polish/--no-polish", help="After each network, optimise its result by mutual information (a few dozen Adam steps at 2 mm; for dense a 10 mm B-spline correction of its field); --no-polish runs the networks alone.")] = True,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the polish's sample lattices; the networks are deterministic).")] = 0,
) -> None:
    """Register MOVING to FIXED with MS-ODENet; writes ANTs-named transforms and images."""
    from .odenet.register import RegisterConfig, register_files

    config = RegisterConfig(model=model.value, checkpoints=_checkpoints(checkpoint), center_of_mass=not no_center_of_mass,
                            principal_axes=not no_principal_axes, polish=polish, initial_transform=list(initial_transform or []), device=device, threads=threads, seed=seed)
    doc = register_files(fixed, moving, out, config, moving_labels)
    t = doc["timings_s"]
    print(f"registered {moving} to {fixed} with {model.value} in {t['wall']:.2f} s (model {t['total']:.2f} s); "
          f"outputs {out}*  NFE {doc['nfe']}")


def _checkpoints(paths: list[Path] | None) -> dict[str, str]:
    """--checkpoint files by the model kind each holds."""
    from .odenet.checkpoint import load

    return {load(path)["model_config"].get("kind"): str(path) for path in paths or []}


class ModelKind(str, enum.Enum):
    rigid = "rigid"
    bspline = "bspline"
    dense = "dense"
    encoder = "encoder"


@app.command()
@user_errors
def train(
    model: Annotated[ModelKind, typer.Option("--model", help="Transformation family of the MS-ODENet, or encoder: the content encoder (translation model) of the learned similarity.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Final model file (OUT.ckpt holds the resumable state, OUT.log.jsonl the log).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder DIR/<subject>/<contrast>.nii.gz (co-registered contrasts).")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Train on generated heads (the default when --data is not given).")] = False,
    label_map: Annotated[Optional[list[Path]], typer.Option("--label-map", help="Label map to render as well (synthetic data), repeatable.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimiser steps (default 2000, encoder 6000; with --resume: the saved run's, or this).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Pairs (encoder: slab pairs) per step (default 2, encoder 4).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    schedule: Annotated[str, typer.Option("--schedule", help="Solvers per level, e.g. A(1e-3)-A(1e-3)-F(0.1) (default: the kind's).")] = "",
    levels: Annotated[int, typer.Option("--levels", min=1, help="Pyramid levels L (= T).")] = 3,
    spacing: Annotated[float, typer.Option("--spacing", help="Finest working spacing (mm).")] = 2.0,
    width: Annotated[int, typer.Option("--width", min=2, help="Channels of the first conv layer.")] = 16,
    size: Annotated[int, typer.Option("--size", min=16, help="Training volumes are SIZE^3 voxels.")] = 96,
    similarity: Annotated[str, typer.Option("--similarity", help="MS-ODENet L_sim: mi (mutual information) or content (learned content features of --encoder).")] = "mi",
    encoder: Annotated[Optional[Path], typer.Option("--encoder", help="--similarity content: encoder from `regode train --model encoder` (default: the shipped weights/encoder.pt).")] = None,
    lambda_sim: Annotated[float, typer.Option(help="Weight of L_sim.")] = 1.0,
    lambda_self: Annotated[float, typer.Option(help="Weight of L_self (known motion).")] = 1.0,
    lambda_reg: Annotated[Optional[float], typer.Option(help="Weight of L_reg (default 2 bspline, 10 dense).")] = None,
    lambda_basin: Annotated[Optional[float], typer.Option(min=0, help="Encoder: weight of the capture-range term, content distance growing with misalignment (default 0: off).")] = None,
    curriculum: Annotated[float, typer.Option(help="Fraction of the steps over which the motion ranges grow from 20 % to 100 %.")] = 0.5,
    max_rotation: Annotated[float, typer.Option(min=0, help="Rigid: rotations U(-a, a) degrees per axis.")] = 80.0,
    max_translation: Annotated[float, typer.Option(min=0, help="Rigid: translations U(-t, t) mm per axis.")] = 20.0,
    max_sigma: Annotated[float, typer.Option(min=0, help="Deformable: B-spline displacement sd U(0, s) mm.")] = 10.0,
    adjoint: Annotated[bool, typer.Option("--adjoint", help="Backpropagate with the adjoint method (less memory).")] = False,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 25,
    validate_every: Annotated[int, typer.Option(min=1, help="Steps between validations.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of the data.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.ckpt with its saved config (--steps may extend it).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train an MS-ODENet (rigid, bspline or dense) or the content encoder on synthetic or folder data."""
    import torch

    from .errors import RegodeError
    from .io.atomic import check_writable
    from .odenet.data import MotionRange
    from .odenet.model import ModelConfig
    from .odenet.train import TrainConfig, train as run_training

    if data is not None and synthetic:
        raise RegodeError("use either --data DIR or --synthetic, not both")
    if threads:
        torch.set_num_threads(threads)
    check_writable(out)
    batch = batch or (4 if model == ModelKind.encoder else 2)
    if model == ModelKind.encoder:
        if label_map or similarity != "mi" or encoder:
            raise RegodeError("--label-map, --similarity and --encoder are for MS-ODENet models, not for training the encoder")
        basin = {} if lambda_basin is None else {"lambda_basin": lambda_basin}
        from .encoder.networks import EncoderConfig
        from .encoder.train import EncoderTrainConfig, train as train_encoder

        try:
            config = EncoderTrainConfig(model=EncoderConfig(width=width, spacing=spacing), data=str(data) if data else None,
                                        steps=steps or 6000, batch=batch, lr=lr, size=size, seed=seed,
                                        checkpoint_every=checkpoint_every, validate_every=validate_every, **basin)
        except ValueError as exc:
            raise RegodeError(str(exc)) from None
        result = train_encoder(config, out, resume=resume, progress=not quiet, steps=steps)
        last = result["history"][-1]
        print(f"wrote {out}: {result['steps']} steps in {result['seconds'] / 60:.1f} min, validation cross-translation L1 "
              f"{last['cross_l1']:.3f}, content ratio aligned/shifted {last['content_ratio']:.3f}"
              + (f", distances in order of misalignment {last['ordered']:.2f}" if "ordered" in last else ""))
        return
    if lambda_basin is not None:
        raise RegodeError("--lambda-basin is for training the encoder (--model encoder)")
    try:
        config = TrainConfig(
            model=ModelConfig(kind=model.value, levels=levels, horizon=float(levels), schedule=schedule, spacing=spacing, width=width),
            data=str(data) if data else None, label_maps=[str(p) for p in label_map or []], steps=steps or 2000, batch=batch, lr=lr,
            similarity=similarity, encoder=str(encoder) if encoder else None, lambda_sim=lambda_sim, lambda_self=lambda_self, lambda_reg=lambda_reg, size=size, seed=seed, adjoint=adjoint,
            checkpoint_every=checkpoint_every, validate_every=validate_every,
            motion=MotionRange(max_rotation, max_translation, max_sigma, ramp_pairs=int(curriculum * (steps or 2000) * batch)),
        )
    except ValueError as exc:
        raise RegodeError(str(exc)) from None
    result = run_training(config, out, resume=resume, progress=not quiet, steps=steps)
    last = result["history"][-1]["val_rmse_mm"] if result["history"] else float("nan")
    print(f"wrote {out}: {result['steps']} steps in {result['seconds'] / 60:.1f} min, validation RMSE(phi) {last:.2f} mm")


def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A string enum of ``values`` for typer's choices."""
    return enum.Enum(name, {v: v for v in values}, type=str)


# fit-field's choices; kept equal to regode.nir's SAMPLERS, METRICS, ... by a test (importing
# regode.nir here would load torch for every command's --help)
Sampler = _choices("Sampler", ("downsize", "patch", "hybrid"))
Metric = _choices("Metric", ("mi", "ncc", "mse", "content", "mind"))
Encoding = _choices("Encoding", ("grid", "fourier", "none"))
Activation = _choices("Activation", ("relu", "sine"))
Solver = _choices("Solver", ("euler", "midpoint", "rk4"))


@app.command("fit-field")
@user_errors
def fit_field(
    fixed: Annotated[Path, typer.Option("--fixed", "-f", help="Fixed (reference) image.")],
    moving: Annotated[Path, typer.Option("--moving", "-m", help="Moving image.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output prefix: PREFIX1Warp.nii.gz, PREFIX1InverseWarp.nii.gz, PREFIX0GenericAffine.mat, PREFIXWarped.nii.gz, ...")],
    diffeomorphic: Annotated[bool, typer.Option("--diffeomorphic", help="Fit a stationary velocity field and integrate it (no folding).")] = False,
    sampler: Annotated[Sampler, typer.Option("--sampler", help="Coordinates per step: strided grid, mini-patches, or both (two fields).")] = Sampler.downsize,
    metric: Annotated[Metric, typer.Option("--metric", help="mi: any contrasts; content: learned content features (any contrasts); mind: MIND descriptors (any contrasts); ncc: local NCC, same contrast; mse.")] = Metric.mi,
    encoder: Annotated[Optional[Path], typer.Option("--encoder", help="--metric content: encoder from `regode train --model encoder` (default: the shipped weights/encoder.pt).")] = None,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Adam steps of the (first) field.")] = 60,
    coarse_iterations: Annotated[int, typer.Option("--coarse-iterations", min=0, help="Adam steps before --iterations on a 2x coarser lattice and smoothed images.")] = 100,
    refine_iterations: Annotated[int, typer.Option("--refine-iterations", min=1, help="Adam steps of the second field (hybrid sampler).")] = 20,
    initial_transform: Annotated[Optional[list[str]], typer.Option("--initial-transform", help="Linear transform file(s) to start from, e.g. register's PREFIX0GenericAffine.mat (-t order; '[f.mat,1]' inverts).")] = None,
    affine: Annotated[bool, typer.Option("--affine", help="First fit an affine map (100 steps on the coarse lattice, then frozen), then the field: for pairs not yet linearly aligned; written to PREFIX0GenericAffine.mat.")] = False,
    center_of_mass: Annotated[bool, typer.Option("--center-of-mass", help="Start from the centres-of-mass translation.")] = False,
    moving_labels: Annotated[Optional[Path], typer.Option("--moving-labels", help="Label image on the moving grid, warped with label interpolation.")] = None,
    encoding: Annotated[Encoding, typer.Option("--encoding", help="grid: multi-resolution feature grids (fast); fourier: Fourier features; none: raw coordinates (with --activation sine: SIREN).")] = Encoding.grid,
    activation: Annotated[Activation, typer.Option("--activation", help="MLP activation (sine: SIREN initialisation).")] = Activation.relu,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 4e-2,
    lambda_fold: Annotated[float, typer.Option(help="Weight of the folding penalty mean(relu(0.1 - det J)).")] = 10.0,
    lambda_grad: Annotated[float, typer.Option(help="Weight of the gradient energy mean ||J - I||^2.")] = 5.0,
    lambda_bending: Annotated[float, typer.Option(help="Weight of the bending energy (second differences, per mm^2).")] = 0.0,
    ncc_window: Annotated[int, typer.Option(min=1, help="Local NCC window (lattice points).")] = 5,
    spacing: Annotated[float, typer.Option("--spacing", help="Working grid spacing (mm).")] = 2.0,
    stride: Annotated[int, typer.Option("--stride", min=1, help="Downsize sampler: one point in STRIDE per axis.")] = 3,
    patch_size: Annotated[int, typer.Option(min=2, help="Mini-patch edge (points).")] = 16,
    patches: Annotated[int, typer.Option(min=1, help="Mini-patches per step.")] = 4,
    solver: Annotated[Solver, typer.Option("--solver", help="Velocity integration (--diffeomorphic).")] = Solver.euler,
    integration_steps: Annotated[int, typer.Option(min=1, help="Fixed integration steps over [0, 1] (--diffeomorphic).")] = 6,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial fields and the samplers.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Register MOVING to FIXED by fitting a neural field to this pair (NIR); writes ANTs-named outputs."""
    from .nir.fields import FieldConfig
    from .nir.fit import FitConfig, fit_files

    config = FitConfig(
        diffeomorphic=diffeomorphic, sampler=sampler.value, metric=metric.value, encoder=str(encoder) if encoder else None, iterations=iterations,
        coarse_iterations=coarse_iterations, refine_iterations=refine_iterations, lr=lr, spacing=spacing, stride=stride, patch_size=patch_size, patches=patches,
        ncc_window=ncc_window, lambda_fold=lambda_fold, lambda_grad=lambda_grad, lambda_bending=lambda_bending,
        solver=solver.value, integration_steps=integration_steps,
        network=FieldConfig(encoding=encoding.value, activation=activation.value),
        affine=affine, center_of_mass=center_of_mass, initial_transform=list(initial_transform or []), device=device, threads=threads, seed=seed,
    )
    doc = fit_files(fixed, moving, out, config, moving_labels, progress=not quiet)
    t = doc["timings_s"]
    print(f"fitted {moving} to {fixed} ({sampler.value} sampler, {metric.value}) in {t['wall']:.2f} s "
          f"(fit {t['total']:.2f} s); outputs {out}*")


@app.command()
@user_errors
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Keep the generated files in this folder.")] = None,
    model: Annotated[RegisterModel, typer.Option("--model", help="MS-ODENet stages to run (dense ones need --checkpoint: only rigid and bspline weights ship).")] = RegisterModel.rigid,
    checkpoint: Annotated[Optional[list[Path]], typer.Option("--checkpoint", help="Model file from `regode train` replacing the shipped one of its kind (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
) -> None:
    """Register a generated two-contrast pair with known motion (no input files needed) and print the error."""
    from .demo import run_demo

    run_demo(out, seed, model.value, threads, _checkpoints(checkpoint))


def main() -> None:
    """The ``regode`` console script. Once a command has returned (its files written and moved
    into place, every writer thread joined), the process ends without the interpreter's shutdown:
    unloading PyTorch's modules takes 0.5-1 s on this 2-core CPU, time a user waits for and that
    does nothing for them. Output streams are flushed first; an uncaught exception still takes the
    normal path (traceback, shutdown)."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):  # e.g. `regode --help | head`
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
