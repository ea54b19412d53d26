"""Training MS-ODENet: L = lambda_sim L_sim + lambda_self L_self + lambda_reg L_reg.

- L_sim: minus the mutual information between the warped moving image and the fixed image at the
  finest level (modality independent), or the content distance ||E3D(warped) - E3D(fixed)||^2 of
  the learned content encoder (``similarity="content"``);
- L_self: L2 between the known motion and the predicted one. Every training pair has exact ground
  truth (two contrasts of one anatomy plus a random motion), so L_self is applied to the
  multi-contrast pair itself (the kind says how: regode.odenet.kinds), in cm^2;
- L_reg: ||grad phi||^2 of the displacement (deformable kinds).

The loop itself (resume, checkpoints, log, progress) is regode.training's; the data of step k is a
pure function of (seed, k), so ``--resume`` continues exactly where a killed run stopped.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .. import training
from ..encoder.features import content_distance, load_encoder
from ..errors import RegodeError
from ..io import read_image
from ..losses import mutual_information
from ..sampling import sample
from .config import TrainConfig
from .data import BrainPairs, FolderPairs, Pair, SyntheticPairs, rmse_on_foreground
from .model import FORMAT, MSODENet, load_model, pyramid

CONTENT_SLICES = 8  # E3D slice positions per axis in L_sim = content
VALIDATION_OFFSET = 10_000_000  # validation pairs use indices no training step reaches


def _source_options(config: TrainConfig) -> dict:
    return dict(size=config.size, spacing=config.model.spacing, motion=config.motion, seed=config.seed)


def make_source(config: TrainConfig):
    common = _source_options(config)
    if config.data:
        return FolderPairs(config.data, config.model.kind, **common)
    if config.generator == "brain":
        return BrainPairs(config.model.kind, **common)
    maps = []
    for path in config.label_maps:
        image = read_image(path, what="label map")
        maps.append((image.data.round().long(), image.grid))
    return SyntheticPairs(config.model.kind, label_maps=maps, **common)


def losses(model: MSODENet, pair: Pair, config: TrainConfig, adjoint: bool = False) -> tuple[torch.Tensor, dict]:
    levels = model.config.levels
    theta, nfe = model(
        pyramid(pair.fixed, pair.grid, levels),
        pyramid(pair.moving, pair.grid, levels),
        pair.theta0,
        pair.center,
        adjoint=adjoint,
    )
    transform = model.transform(theta, model.state_grid(pair.grid), pair.center)
    moved = transform.map_grid(pair.grid)
    disp = (moved - pair.grid.world_points(dtype=moved.dtype)[None]).movedim(-1, 1)
    warped = sample(pair.moving, pair.grid, moved)
    if config.similarity == "content":
        encoder = content_encoder(config.encoder, model.config.spacing)
        # slice positions drawn in each fixed image (seed 0): they differ between pairs, not between runs
        l_sim = sum(
            content_distance(encoder.content, w[None], f[None], CONTENT_SLICES, seed=0, slices=encoder.config.slices)
            for w, f in zip(warped, pair.fixed, strict=False)
        ) / len(warped)
    else:
        l_sim = -mutual_information(warped, pair.fixed)
    l_self = model.kind.self_loss(theta, disp, pair.truth)
    l_reg = model.kind.regulariser(disp, pair.grid)
    total = config.lambda_sim * l_sim + config.lambda_self * l_self + config.lambda_reg * l_reg
    return total, {
        "loss": float(total.detach()),
        "sim": float(l_sim.detach()),
        "self": float(l_self.detach()),
        "reg": float(l_reg.detach()),
        "nfe": nfe,
        "displacement": disp.detach(),
    }


@functools.lru_cache(maxsize=2)
def content_encoder(path: str | None, spacing: float):
    """The frozen translation model whose E^c gives L_sim = content; its training spacing must be
    the MS-ODENet's working spacing (the features are not scale-invariant)."""
    return load_encoder(path, spacing)[0].requires_grad_(False)


def validation_sources(config: TrainConfig) -> dict:
    """``{figure name: pair source}`` of the real-image validation folders (``--validate-data``),
    named by their folders' names."""
    return {
        f"val_rmse_mm_{Path(folder).name}": FolderPairs(folder, config.model.kind, **_source_options(config))
        for folder in config.validate_data
    }


@torch.no_grad()
def validate(model: MSODENet, source, config: TrainConfig) -> float:
    """Mean RMSE(phi) (mm, over the fixed foreground) on fixed validation pairs (at the full motion
    range: validation indices lie beyond any curriculum)."""
    model.eval()
    errors = []
    for i in range(config.val_pairs):
        pair = source.batch(VALIDATION_OFFSET + i, 1)
        _, info = losses(model, pair, config)
        truth = model.kind.truth_displacement(pair.truth, pair.center, pair.grid)
        errors.append(float(rmse_on_foreground(info["displacement"], truth, pair.fixed)))
    model.train()
    return sum(errors) / len(errors)


class Run:
    """One MS-ODENet training run (a regode.training.Run)."""

    def __init__(self, config: TrainConfig, resuming: bool = False):
        self.config = config
        self.model = MSODENet(config.model)
        if config.init and not resuming:  # a resumed run's weights come from its checkpoint
            if not Path(config.init).is_file():
                raise RegodeError(f"--init {config.init}: no such model file")
            start, _ = load_model(config.init, config.model.kind)
            try:  # the architecture must match; the solver schedule may differ
                self.model.load_state_dict(start.state_dict())
            except RuntimeError:
                raise RegodeError(
                    f"--init {config.init}: its network (width {start.config.width}, {start.config.levels} levels) "
                    f"is not this run's (width {config.model.width}, {config.model.levels} levels)"
                ) from None
        if config.learn == "step":  # the rest stays fixed: no gradients computed for it
            self.model.requires_grad_(False)
            for net in self.model.nets:
                net.log_step.requires_grad_(True)
        learned = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = {"adam": torch.optim.Adam(learned, lr=config.lr)}
        self.source = make_source(config)
        self.folders = validation_sources(config)
        self.title = f"train {config.model.kind}"

    def step(self, step: int) -> dict:
        pair = self.source.batch(step * self.config.batch, self.config.batch)
        loss, info = losses(self.model, pair, self.config, adjoint=self.config.adjoint)
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {k: info[k] for k in ("loss", "sim", "self", "reg", "nfe")}

    def validate(self) -> dict:
        figures = {"val_rmse_mm": validate(self.model, self.source, self.config)}
        for name, source in self.folders.items():
            figures[name] = validate(self.model, source, self.config)
        return figures

    def describe(self, record: dict, last: dict, seconds: float) -> str:
        return f"loss {record['loss']:.4f} ({1 / seconds:.2f} it/s) val {last['val_rmse_mm']:.2f} mm"

    def after_validation(self, step: int) -> None:
        pass


def train(
    config: TrainConfig, out: Path, resume: bool = False, progress: bool = True, steps: int | None = None
) -> dict:
    """Train (or resume) and write ``out`` (final model) and ``out.ckpt`` (resumable state). On
    resume the saved config is used; ``steps`` (if given) replaces its number of steps."""
    return training.train(
        functools.partial(Run, resuming=resume), config, out, FORMAT, "MS-ODENet", resume, progress, steps
    )
