"""``regode train``: train an MS-ODENet kind or the content encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import GENERATORS
from ..encoder.config import EncoderConfig, EncoderTrainConfig
from ..odenet.config import KINDS, LEARN, SIMILARITIES, ModelConfig, MotionRange, TrainConfig
from .app import app, choices, user_errors

Model = choices("Model", KINDS + ("encoder",))
Similarity = choices("Similarity", SIMILARITIES)
Generator = choices("Generator", GENERATORS)
Learn = choices("Learn", LEARN)
T, E, M = TrainConfig, EncoderTrainConfig, MotionRange  # the defaults below are theirs; None: the model's config's


@app.command()
@user_errors
def train(
    model: Annotated[Model, typer.Option("--model", help="Transformation family of the MS-ODENet, or encoder: the content encoder (translation model) of the learned similarity.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Final model file (OUT.ckpt holds the resumable state, OUT.log.jsonl the log).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Dataset folder DIR/<subject>/<contrast>.nii.gz (co-registered contrasts).")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Train on generated data (the default when --data is not given).")] = False,
    generator: Annotated[Generator, typer.Option("--generator", help="Synthetic data: heads (random head-shaped label maps) or brain (brain-like subjects drawn from the MNI152 template's tissue maps).")] = Generator(T.generator),
    label_map: Annotated[Optional[list[Path]], typer.Option("--label-map", help="Label map to render as well (synthetic data), repeatable.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help=f"Optimiser steps (default {T.steps}, encoder {E.steps}; with --resume: the saved run's, or this).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help=f"Pairs (encoder: slab pairs) per step (default {T.batch}, encoder {E.batch}).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=f"Adam learning rate (default {T.lr:g}, encoder {E.lr:g}).")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="Solvers per level, e.g. A(1e-3)-A(1e-3)-F(0.1) (default: the kind's).")] = ModelConfig.schedule,
    levels: Annotated[int, typer.Option("--levels", help="Pyramid levels L (= T).")] = ModelConfig.levels,
    spacing: Annotated[float, typer.Option("--spacing", help="Finest working spacing (mm).")] = ModelConfig.spacing,
    width: Annotated[int, typer.Option("--width", help="Channels of the first conv layer.")] = ModelConfig.width,
    size: Annotated[int, typer.Option("--size", help="Training volumes are SIZE^3 voxels.")] = T.size,
    learn: Annotated[Learn, typer.Option("--learn", help="MS-ODENet: optimise all parameters, or only each level's force step (the networks' learned terms stay as they start; the steps are on a log scale: use a larger --lr, e.g. 0.02).")] = Learn(T.learn),
    init: Annotated[Optional[Path], typer.Option("--init", help="MS-ODENet: start from this model file's weights (same kind and architecture), e.g. to train all parameters after --learn step.")] = None,
    similarity: Annotated[Similarity, typer.Option("--similarity", help="MS-ODENet L_sim: mi (mutual information) or content (learned content features of --encoder).")] = Similarity(T.similarity),
    encoder: Annotated[Optional[Path], typer.Option("--encoder", help="--similarity content: encoder from `regode train --model encoder` (default: the shipped weights/encoder.pt).")] = None,
    lambda_sim: Annotated[float, typer.Option(help="Weight of L_sim.")] = T.lambda_sim,
    lambda_self: Annotated[float, typer.Option(help="Weight of L_self (known motion).")] = T.lambda_self,
    lambda_reg: Annotated[Optional[float], typer.Option(help="Weight of L_reg (default 2 bspline, 10 dense).")] = None,
    lambda_basin: Annotated[Optional[float], typer.Option(help="Encoder: weight of the capture-range term, content distance growing with misalignment (default 0: off).")] = None,
    curriculum: Annotated[float, typer.Option(help="Fraction of the steps over which the motion ranges grow from 20 % to 100 %.")] = 0.5,
    max_rotation: Annotated[float, typer.Option(help="Rigid, affine: rotations U(-a, a) degrees per axis.")] = M.max_rotation,
    max_translation: Annotated[float, typer.Option(help="Rigid, affine: translations U(-t, t) mm per axis.")] = M.max_translation,
    max_scale: Annotated[float, typer.Option(help="Affine: scales exp(U(-s, s)) per axis.")] = M.max_scale,
    max_shear: Annotated[float, typer.Option(help="Affine: shears U(-h, h).")] = M.max_shear,
    max_sigma: Annotated[float, typer.Option(help="Deformable: B-spline displacement sd U(0, s) mm.")] = M.max_sigma,
    adjoint: Annotated[bool, typer.Option("--adjoint", help="Backpropagate with the adjoint method (less memory).")] = T.adjoint,
    checkpoint_every: Annotated[Optional[int], typer.Option(help=f"Steps between checkpoints (default {T.checkpoint_every}, encoder {E.checkpoint_every}).")] = None,
    validate_every: Annotated[Optional[int], typer.Option(help=f"Steps between validations (default {T.validate_every}, encoder {E.validate_every}).")] = None,
    validate_data: Annotated[Optional[list[Path]], typer.Option("--validate-data", help="MS-ODENet: also validate on the subjects of this dataset folder moved by fixed random motions (logged by the folder's name, for measurement), repeatable.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of the data.")] = T.seed,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.ckpt with its saved config (--steps may extend it).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=0, help="CPU threads (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train an MS-ODENet (rigid, affine, bspline or dense) or the content encoder on synthetic or folder data."""
    import torch

    from ..checkpoint import training_files
    from ..errors import RegodeError
    from ..io.atomic import check_outputs

    if data is not None and (synthetic or generator.value != T.generator):
        raise RegodeError("use either --data DIR or synthetic data (--synthetic, --generator), not both")
    if threads:
        torch.set_num_threads(threads)
    ckpt, log = training_files(out)
    check_outputs([out] if resume else [out, ckpt, log], [*(label_map or ()), encoder, init, *(validate_data or ())])  # resuming reads and rewrites OUT.ckpt
    data = str(data) if data else None
    if model.value == "encoder":
        if label_map or similarity.value != T.similarity or encoder or validate_data or init or learn.value != T.learn:
            raise RegodeError("--label-map, --similarity, --encoder, --validate-data, --init and --learn are for MS-ODENet models, "
                              "not for training the encoder")
        return _train_encoder(out, data, generator.value, steps, batch, lr, lambda_basin, checkpoint_every, validate_every,
                              width, spacing, size, seed, resume, quiet)
    from ..odenet.config import curriculum_pairs
    from ..odenet.train import train as run

    if lambda_basin is not None:
        raise RegodeError("--lambda-basin is for training the encoder (--model encoder)")
    steps_, batch_ = T.steps if steps is None else steps, T.batch if batch is None else batch
    config = TrainConfig(
        model=ModelConfig(kind=model.value, levels=levels, horizon=float(levels), schedule=schedule, spacing=spacing, width=width),
        data=data, label_maps=tuple(str(p) for p in label_map or ()), generator=generator.value, steps=steps_, batch=batch_, lr=T.lr if lr is None else lr,
        learn=learn.value, init=str(init) if init else None,
        similarity=similarity.value, encoder=str(encoder) if encoder else None, lambda_sim=lambda_sim, lambda_self=lambda_self,
        lambda_reg=lambda_reg, size=size, seed=seed, adjoint=adjoint,
        checkpoint_every=T.checkpoint_every if checkpoint_every is None else checkpoint_every,
        validate_every=T.validate_every if validate_every is None else validate_every,
        validate_data=tuple(str(p) for p in validate_data or ()),
        motion=MotionRange(max_rotation, max_translation, max_scale, max_shear, max_sigma, ramp_pairs=curriculum_pairs(curriculum, steps_, batch_)),
    )
    result = run(config, out, resume=resume, progress=not quiet, steps=steps)
    last = result["history"][-1] if result["history"] else {"val_rmse_mm": float("nan")}
    folders = "".join(f", {k.removeprefix('val_rmse_mm_')} {v:.2f} mm" for k, v in last.items() if k.startswith("val_rmse_mm_"))
    print(f"wrote {out}: {result['steps']} steps in {result['seconds'] / 60:.1f} min, validation RMSE(phi) {last['val_rmse_mm']:.2f} mm{folders}")


def _train_encoder(out, data, generator, steps, batch, lr, lambda_basin, checkpoint_every, validate_every, width, spacing, size, seed,
                   resume, quiet) -> None:
    from ..encoder.train import train as run

    given = {k: v for k, v in (("steps", steps), ("batch", batch), ("lr", lr), ("lambda_basin", lambda_basin),
                               ("checkpoint_every", checkpoint_every), ("validate_every", validate_every)) if v is not None}
    config = EncoderTrainConfig(model=EncoderConfig(width=width, spacing=spacing), data=data, size=size, seed=seed,
                                generator=generator, **given)
    result = run(config, out, resume=resume, progress=not quiet, steps=steps)
    last = result["history"][-1]
    print(f"wrote {out}: {result['steps']} steps in {result['seconds'] / 60:.1f} min, validation cross-translation L1 "
          f"{last['cross_l1']:.3f}, content ratio aligned/shifted {last['content_ratio']:.3f}"
          + (f", distances in order of misalignment {last['ordered']:.2f}" if "ordered" in last else ""))
