"""Training MS-ODENet: L = lambda_sim L_sim + lambda_self L_self + lambda_reg L_reg.

- L_sim: minus the mutual information between the warped moving image and the fixed image at the
  finest level (modality independent), or the content distance ||E3D(warped) - E3D(fixed)||^2 of
  the learned content encoder (``similarity="content"``);
- L_self: L2 between the known motion and the predicted one. Every training pair has exact ground
  truth (two contrasts of one anatomy plus a random motion), so L_self is applied to the
  multi-contrast pair itself; for rigid models the rotation vector enters as arc length at 50 mm,
  for deformable models the displacement field; both in cm^2;
- L_reg: ||grad phi||^2 of the displacement (deformable models).

Checkpoints (``OUT.ckpt``) carry the model and training configs, the optimiser and the step; the
data of step k is a pure function of (seed, k), so ``--resume`` continues exactly where a killed
run stopped. The final model (``OUT``) holds no optimiser state.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..losses import gradient_energy, mutual_information
from ..sampling import sample
from . import checkpoint
from .data import FolderPairs, MotionRange, Pair, SyntheticPairs, rmse_on_foreground, truth_displacement
from .model import MSODENet, ModelConfig, pyramid

DEFAULT_LAMBDA_REG = {"rigid": 0.0, "bspline": 2.0, "dense": 10.0}
SIMILARITIES = ("mi", "content")
CONTENT_SLICES = 8  # E3D slice positions per axis in L_sim = content
ARC_RADIUS = 50.0  # mm: a rotation-vector error of 1 rad counts as 50 mm in L_self


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str | None = None
    """dataset folder (benchmark layout); None: synthetic data."""
    label_maps: list[str] = field(default_factory=list)
    """label-map images to render as well as random heads (synthetic data)."""
    steps: int = 2000
    batch: int = 2
    lr: float = 1e-4
    similarity: str = "mi"
    """L_sim: "mi" (mutual information) or "content" (||E3D(warped) - E3D(fixed)||^2 with the
    content encoder ``encoder``)."""
    encoder: str | None = None
    """content similarity: the encoder checkpoint (None: the shipped ``weights/encoder.pt``)."""
    lambda_sim: float = 1.0
    lambda_self: float = 1.0
    lambda_reg: float | None = None
    """None: 0 (rigid), 2 (bspline), 10 (dense), the paper's."""
    size: int = 96
    """training volumes are size^3 voxels at the model's spacing."""
    seed: int = 0
    adjoint: bool = False
    """backpropagate with torchdiffeq's adjoint method instead of through the solver."""
    checkpoint_every: int = 25
    validate_every: int = 100
    val_pairs: int = 8
    motion: MotionRange = field(default_factory=MotionRange)

    def __post_init__(self):
        if self.motion.ramp_pairs < 0:
            raise ValueError("the curriculum length must not be negative")
        if self.lambda_reg is None:
            self.lambda_reg = DEFAULT_LAMBDA_REG[self.model.kind]
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.similarity!r}: choose from {', '.join(SIMILARITIES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = ModelConfig(**d["model"])
        motion = dict(d["motion"])
        motion["control_spacings"] = tuple(motion["control_spacings"])
        d["motion"] = MotionRange(**motion)
        return cls(**d)


VALIDATION_OFFSET = 10_000_000  # validation pairs use indices no training step reaches


def make_source(config: TrainConfig):
    kind = config.model.kind
    common = dict(size=config.size, spacing=config.model.spacing, motion=config.motion, seed=config.seed)
    if config.data:
        return FolderPairs(config.data, kind, **common)
    maps = []
    if config.label_maps:
        from ..io import read_image

        for path in config.label_maps:
            image = read_image(path, what="label map")
            maps.append((image.data.round().long(), image.grid))
    return SyntheticPairs(kind, label_maps=maps, **common)


def losses(model: MSODENet, pair: Pair, config: TrainConfig, adjoint: bool = False) -> tuple[torch.Tensor, dict]:
    levels = model.config.levels
    theta, nfe = model(pyramid(pair.fixed, pair.grid, levels), pyramid(pair.moving, pair.grid, levels),
                       pair.theta0, pair.center, adjoint=adjoint)
    transform = model.transform(theta, model.state_grid(pair.grid), pair.center)
    moved = transform.map_grid(pair.grid)
    disp = (moved - pair.grid.world_points(dtype=moved.dtype)[None]).movedim(-1, 1)
    warped = sample(pair.moving, pair.grid, moved)
    if config.similarity == "content":
        from ..encoder.features import content_distance

        encoder = content_encoder(config.encoder, model.config.spacing)
        # slice positions drawn in each fixed image (seed 0): they differ between pairs, not between runs
        l_sim = sum(content_distance(encoder.content, w[None], f[None], CONTENT_SLICES, seed=0, slices=encoder.config.slices)
                    for w, f in zip(warped, pair.fixed)) / len(warped)
    else:
        l_sim = -mutual_information(warped, pair.fixed)
    if model.config.kind == "rigid":
        diff = theta - pair.truth
        l_self = torch.cat([diff[:, :3] * ARC_RADIUS, diff[:, 3:]], 1).square().mean() / 100
    else:
        l_self = (disp - pair.truth).square().mean() / 100
    l_reg = gradient_energy(disp, pair.grid.spacing) if model.config.kind != "rigid" else torch.zeros(())
    total = config.lambda_sim * l_sim + config.lambda_self * l_self + config.lambda_reg * l_reg
    return total, {"loss": float(total.detach()), "sim": float(l_sim.detach()), "self": float(l_self.detach()), "reg": float(l_reg.detach()), "nfe": nfe,
                   "displacement": disp.detach()}


@functools.lru_cache(maxsize=2)
def content_encoder(path: str | None, spacing: float):
    """The frozen translation model whose E^c gives L_sim = content; its training spacing must be
    the MS-ODENet's working spacing (the features are not scale-invariant)."""
    from ..encoder.train import load_encoder

    return load_encoder(path, spacing)[0].requires_grad_(False)


@torch.no_grad()
def validate(model: MSODENet, source, config: TrainConfig) -> float:
    """Mean RMSE(phi) (mm, over the fixed foreground) on fixed validation pairs."""
    model.eval()
    errors = []
    for i in range(config.val_pairs):
        pair = source.batch(VALIDATION_OFFSET + i, 1)
        _, info = losses(model, pair, config)
        truth = truth_displacement(model.config.kind, pair, lambda p, c: model.transform(p, None, c))
        errors.append(float(rmse_on_foreground(info["displacement"], truth, pair.fixed)))
    model.train()
    return sum(errors) / len(errors)


def train(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True, steps: int | None = None) -> dict:
    """Train (or resume) and write ``out`` (final model) and ``out.ckpt`` (resumable state). On
    resume the saved config is used; ``steps`` (if given) replaces its number of steps."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    out = Path(out)
    ckpt_path, log_path = checkpoint.training_files(out)
    console = Console(stderr=True)
    state = None
    if resume:
        state = checkpoint.resume_state(out)
        config = TrainConfig.from_dict(state["train_config"])
        config.steps = steps or config.steps
    torch.manual_seed(config.seed)
    model = MSODENet(config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, seconds, history = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        console.print(f"resuming {ckpt_path} at step {step}")
    source = make_source(config)

    def save(path: Path, final: bool) -> None:
        checkpoint.save(path, model, config, step, seconds, history, None if final else optimizer)

    if step == 0 and not history:
        # the untrained model (a multi-scale gradient flow of MI) is the baseline training must beat
        if progress:
            console.print(f"validating the untrained model on {config.val_pairs} pairs (the baseline, logged as step 0)")
        history.append({"step": 0, "val_rmse_mm": validate(model, source, config), "seconds": 0.0})
        with open(log_path, "a") as log:
            log.write(json.dumps(history[-1]) + "\n")
    model.train()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not progress) as bar:
        job = bar.add_task(f"train {config.model.kind}", total=config.steps, completed=step, info="")
        while step < config.steps:
            start = time.perf_counter()
            pair = source.batch(step * config.batch, config.batch)
            loss, info = losses(model, pair, config, adjoint=config.adjoint)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            elapsed = time.perf_counter() - start
            seconds += elapsed
            record = {"step": step, **{k: info[k] for k in ("loss", "sim", "self", "reg", "nfe")}, "seconds": round(seconds, 2)}
            if step % config.validate_every == 0 or step == config.steps:
                record["val_rmse_mm"] = validate(model, source, config)
                history.append({"step": step, "val_rmse_mm": record["val_rmse_mm"], "seconds": round(seconds, 1)})
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            val = f" val {history[-1]['val_rmse_mm']:.2f} mm" if history else ""
            bar.update(job, advance=1, info=f"loss {info['loss']:.4f} ({1 / elapsed:.2f} it/s){val}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(ckpt_path, final=False)
    save(out, final=True)
    return {"steps": step, "seconds": seconds, "history": history}
