"""MS-ODENet's configurations: the model, its training, the registration and its polish.

No torch here (see regode.config): the command line reads its choices and defaults from these
classes. The model kinds and their cascades are regode.odenet.registry's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from .. import config as check
from ..config import GENERATORS
from ..errors import RegodeError
from ..options import Spec, group, setting, validate
from .registry import KINDS, MODELS, PolishConfig, PolishLevel, inter_subject  # noqa: F401  (PolishLevel: re-exported)

SIMILARITIES = ("mi", "content")
LEARN = ("all", "step")
"""what training optimises: every parameter, or only each level's force step (the networks'
learned terms stay as they start: the step sizes of a multi-scale gradient flow, learned)."""
FINE_METRICS = ("auto", "mi", "ncc")
"""the fine level's similarity: auto (regode.contrast: local NCC for one contrast, MI across), or either."""
SOLVERS = {"F": "euler", "A": "adaptive_heun", "R": "rk4"}


@dataclass(frozen=True)
class Solver:
    """One level's solver: ``F(dt)`` Euler with a fixed step, ``R(dt)`` fixed-step Runge-Kutta 4,
    ``A(tol)`` adaptive Heun with relative and absolute tolerance ``tol``."""

    letter: str
    value: float

    @property
    def method(self) -> str:
        return SOLVERS[self.letter]

    def kwargs(self) -> dict:
        if self.letter == "A":
            return {"method": self.method, "rtol": self.value, "atol": self.value}
        return {"method": self.method, "options": {"step_size": self.value}}

    def __str__(self) -> str:
        return f"{self.letter}({self.value:g})"


def parse_schedule(text: str, levels: int) -> list[Solver]:
    """``"A(1e-3)-A(1e-3)-F(0.1)"`` -> one :class:`Solver` per level (coarse to fine)."""
    # tolerances such as 1e-3 contain '-': read the levels as LETTER(number) tokens
    parts = re.findall(r"([FAR])\(\s*([0-9.eE+-]+)\s*\)", text)
    rebuilt = "-".join(f"{a}({b})" for a, b in parts)
    if not parts or rebuilt.replace(" ", "") != text.replace(" ", ""):
        raise RegodeError(
            f"bad --schedule {text!r}: write e.g. A(1e-3)-A(1e-3)-F(0.1) (F Euler, R rk4, A adaptive Heun)"
        )
    if len(parts) != levels:
        raise RegodeError(f"--schedule {text!r} has {len(parts)} levels, the model has {levels}")
    try:
        solvers = [Solver(letter, float(value)) for letter, value in parts]
    except ValueError:
        raise RegodeError(f"bad number in --schedule {text!r}") from None
    if any(not s.value > 0 for s in solvers):
        raise RegodeError(f"solver steps and tolerances must be positive in --schedule {text!r}")
    return solvers


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an MS-ODENet (saved in every checkpoint)."""

    kind: str = setting(
        "rigid",
        "Transformation family of the MS-ODENet, or encoder: the content encoder of the learned similarity.",
        flag="--model",
        choices=tuple(KINDS),
    )
    levels: int = setting(3, "Pyramid levels L (factor 2 per level).", low=1)
    horizon: float | None = setting(
        None,
        "Integration time T; level l is solved on [(l-1)T/L, lT/L] (default: L).",
        low=0,
        above=True,
        none="auto",
        derived=True,
    )
    schedule: str = setting(
        "",
        "Solvers per level, coarse to fine, e.g. A(1e-3)-A(1e-3)-F(0.1) (default: Euler, F(0.25) per level "
        "and F(0.5) on the finest of 3).",
        derived=True,
    )
    spacing: float = setting(2.0, "Finest working spacing (isotropic).", unit="mm", low=0, above=True)
    width: int = setting(16, "Channels of the first conv layer.", low=2)
    control_spacing: float = setting(
        20.0, "B-spline control-point spacing of the model's field.", unit="mm", low=0, above=True
    )

    def __post_init__(self):
        validate(self)
        if self.horizon is None:
            object.__setattr__(self, "horizon", float(self.levels))
        if not self.schedule:  # every level F(0.25); 4 + 4 + 2 function evaluations with 3 levels
            object.__setattr__(
                self, "schedule", "F(0.25)-F(0.25)-F(0.5)" if self.levels == 3 else "-".join(["F(0.25)"] * self.levels)
            )
        parse_schedule(self.schedule, self.levels)


@dataclass(frozen=True)
class MotionRange:
    """Random motion used in training (rotations as ITK Euler angles about x, y, z)."""

    max_rotation: float = setting(80.0, "Rigid, affine: rotations U(-a, a) per axis.", unit="degrees", low=0)
    max_translation: float = setting(20.0, "Rigid, affine: translations U(-t, t) per axis.", unit="mm", low=0)
    max_scale: float = setting(0.15, "Affine: scale factors exp(U(-s, s)) per axis.", low=0)
    max_shear: float = setting(0.1, "Affine: the three shears U(-h, h).", low=0)
    max_sigma: float = setting(
        10.0, "Deformable: B-spline control displacement sd, drawn U(0, s) per pair.", unit="mm", low=0
    )
    control_spacings: tuple[float, ...] = setting(
        (30.0, 40.0, 50.0),
        "Deformable: B-spline control spacings of the motion, one drawn per pair.",
        unit="mm",
        low=0,
        above=True,
        flag="",
    )
    ramp_pairs: int | None = setting(
        None,
        "Training pairs over which the motion ranges grow linearly from 20 % to 100 % (0: no ramp; "
        "default: TrainConfig.curriculum of the run's pairs).",
        low=0,
        flag="",
        none="auto",
        derived=True,
    )

    def __post_init__(self):
        validate(self)
        check.require(len(self.control_spacings) > 0, "the motion's control spacings must be positive")

    def at(self, index: int) -> MotionRange:
        """The ranges for training pair ``index``."""
        if not self.ramp_pairs or index >= self.ramp_pairs:
            return self
        f = 0.2 + 0.8 * index / self.ramp_pairs
        return MotionRange(
            self.max_rotation * f,
            self.max_translation * f,
            self.max_scale * f,
            self.max_shear * f,
            self.max_sigma * f,
            self.control_spacings,
            0,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines an MS-ODENet training run (saved in every checkpoint)."""

    model: ModelConfig = group(ModelConfig)
    data: str | None = setting(
        None,
        "Dataset folder DIR/<subject>/<contrast>.nii.gz (co-registered contrasts); default: synthetic data.",
        path=True,
    )
    label_maps: tuple[str, ...] = setting(
        (), "Label map to render as well as random heads (synthetic data), repeatable.", flag="--label-map", path=True
    )
    generator: str = setting(
        "heads",
        "Synthetic data: heads (random head-shaped label maps) or brain (brain-like subjects drawn "
        "from the MNI152 template's tissue maps).",
        choices=GENERATORS,
    )
    steps: int = setting(2000, "Optimiser steps (with --resume: the saved run's, or this).", low=1)
    batch: int = setting(2, "Pairs per step.", low=1)
    lr: float = setting(1e-4, "Adam's learning rate.", low=0, above=True)
    learn: str = setting(
        "all",
        "Optimise all parameters, or only each level's force step (on a log scale: use a larger --lr, e.g. 0.02).",
        choices=LEARN,
    )
    init: str | None = setting(None, "Start from this model file's weights (same kind and architecture).", path=True)
    similarity: str = setting(
        "mi", "L_sim: mi (mutual information) or content (learned content features of --encoder).", choices=SIMILARITIES
    )
    encoder: str | None = setting(
        None,
        "--similarity content: encoder from `regode train --model encoder` (default: the shipped encoder.pt).",
        path=True,
    )
    lambda_sim: float = setting(1.0, "Weight of L_sim.", low=0)
    lambda_self: float = setting(1.0, "Weight of L_self (known motion).", low=0)
    lambda_reg: float | None = setting(
        None, "Weight of L_reg (default: the kind's, 2 bspline, 10 dense, 0 linear).", low=0, none="auto", derived=True
    )
    size: int = setting(96, "Training volumes are SIZE^3 voxels at the model's spacing.", low=16)
    seed: int = setting(0, "Seed of the initial weights and of the data.")
    adjoint: bool = setting(False, "Backpropagate with torchdiffeq's adjoint method (less memory).")
    checkpoint_every: int = setting(25, "Steps between checkpoints.", low=1)
    validate_every: int = setting(100, "Steps between validations.", low=1)
    val_pairs: int = setting(8, "Validation pairs.", low=1)
    validate_data: tuple[str, ...] = setting(
        (),
        "Also validate on the subjects of this dataset folder moved by fixed random motions "
        "(logged by the folder's name), repeatable.",
        path=True,
    )
    curriculum: float = setting(
        0.5, "Fraction of the training pairs over which the motion ranges grow from 20 % to 100 %.", low=0, high=1
    )
    motion: MotionRange = group(MotionRange)

    def __post_init__(self):
        validate(self)
        names = [Path(folder).name for folder in self.validate_data]
        check.require(
            all(names) and len(set(names)) == len(names),
            "--validate-data folders need distinct, non-empty names (their figures are logged by name)",
        )
        check.require(
            not (self.label_maps and self.generator != "heads"), "--label-map renders with the heads generator only"
        )
        if self.lambda_reg is None:
            object.__setattr__(self, "lambda_reg", KINDS[self.model.kind].lambda_reg)
        if self.motion.ramp_pairs is None:
            object.__setattr__(
                self,
                "motion",
                replace(self.motion, ramp_pairs=int(self.curriculum * self.steps * self.batch)),
            )


@dataclass(frozen=True)
class RegisterConfig(check.PairRun):
    """Everything that defines a registration (saved in ``PREFIXregode.json``); the start, masks,
    device, threads and seed are :class:`~regode.config.PairRun`'s."""

    model: str = setting(
        "rigid",
        "MS-ODENet stages, run in order: linear kinds (rigid, affine) first, then a deformable one "
        "(bspline, dense); between subjects or to a template: affine+bspline (--preset inter-subject).",
        choices=MODELS,
    )
    checkpoints: tuple[str, ...] = setting(
        (),
        "Model file from `regode train` replacing the shipped one of its kind (repeatable).",
        flag="--checkpoint",
        path=True,
    )
    center_of_mass: bool = setting(
        True,
        "Start from the translation between the centres of the images' head masks (off: from the "
        "headers alone, no principal axes).",
    )
    principal_axes: bool = setting(
        True,
        "Models that start with a rigid or affine stage: start from the best principal-axes "
        "alignment, not only from the translation between the head centres.",
    )
    polish: bool = setting(
        True,
        "After each network, optimise its result by mutual information (a few dozen Adam steps at 2 mm; "
        "for dense a 10 mm B-spline correction of its field); off: the networks alone.",
    )
    polish_schedule: PolishConfig = group(PolishConfig, cli=False)
    network_levels: int | None = setting(
        None,
        "Pyramid levels each network integrates, coarse first (the shipped models: 8, 4 and "
        "2 mm). Default with the polish: all but the finest, the rigid network its coarsest "
        "only; all without the polish.",
        low=1,
        none="auto",
    )
    fine_spacing: float | None = setting(
        None,
        "Refine the last deformable stage on images at this spacing (0: no). Default (auto): "
        "the fixed image's spacing (at least 1 mm) for the affine+bspline/dense cascades, none "
        "for the other models.",
        unit="mm",
        low=0,
        none="auto",
    )
    metric: tuple[str, ...] = setting(
        ("auto",),
        "The fine level's similarity: auto (local NCC for one contrast, MI across contrasts, judged on the "
        "pair), mi or ncc; with several channels one for all or one per channel, comma-separated (ncc,mi).",
        choices=FINE_METRICS,
        separator=",",
    )

    def __post_init__(self):
        object.__setattr__(self, "checkpoints", tuple(str(p) for p in self.checkpoints))
        if isinstance(self.metric, str):  # RegisterConfig(metric="ncc") or "ncc,mi"
            object.__setattr__(self, "metric", tuple(m.strip() for m in self.metric.split(",")))
        super().__post_init__()
        check.require(len(self.metric) > 0, "--metric needs a value")
        check.require(
            not self.fine_spacing or not all(KINDS[name].linear for name in self.stages),
            f"--fine-spacing refines a deformable stage; --model {self.model} has none",
        )
        check.require(
            self.polish or not self.fine_spacing,
            "--fine-spacing is a polish at the image's resolution: not with --no-polish",
        )
        check.require(
            self.polish or not (self.fixed_mask or self.moving_mask),
            "--fixed-mask and --moving-mask act on the polish: with --no-polish they would do nothing",
        )

    @property
    def stages(self) -> list[str]:
        """The model kinds, in the order they run."""
        return self.model.split("+")

    def levels_run(self, kind: str, levels: int) -> int:
        """The pyramid levels that a ``kind`` network of ``levels`` levels integrates (coarse first)."""
        if self.network_levels is None:
            return min(levels, KINDS[kind].polished_levels or max(1, levels - 1)) if self.polish else levels
        if self.network_levels > levels:
            raise RegodeError(f"--network-levels {self.network_levels}: the {kind} model has {levels} pyramid levels")
        return self.network_levels

    @property
    def fine_request(self) -> float | None:
        """The fine level asked for: mm, None for the fixed image's spacing, 0 for none."""
        if self.fine_spacing is not None:
            return self.fine_spacing
        return None if inter_subject(self.model) and self.polish else 0.0


PRESETS = {"inter-subject": {"model": "affine+bspline"}}
"""``register --preset``: settings for a kind of pair, each applied where neither an option nor a
config file gives it. inter-subject (two subjects, or a subject and a template): the affine network
from the head centres (and the headers' start, judged after it), the B-spline network, each
polished, and the fine level at the fixed image's spacing with the similarity judged per channel
(docs/guide/between-subjects.md)."""

SPEC = Spec("register", {"inputs": check.PairInputs, "config": RegisterConfig}, presets=PRESETS)
"""the settings of ``regode register`` (and of a cohort's register rows): the files, then the config; its presets."""


@dataclass(frozen=True)
class DemoConfig:
    """``regode demo``: a generated pair with known motion, registered with ``register``."""

    model: str = setting("rigid", "MS-ODENet stages to run.", choices=MODELS)
    checkpoints: tuple[str, ...] = setting(
        (),
        "Model file from `regode train` replacing the shipped one of its kind (repeatable).",
        flag="--checkpoint",
        path=True,
    )
    seed: int = setting(0, "Random seed (the phantom, its motion and the registration).")
    threads: int | None = setting(None, "CPU threads (default and 0: all cores).", low=0)

    def __post_init__(self):
        object.__setattr__(self, "checkpoints", tuple(str(p) for p in self.checkpoints))
        validate(self)


DEMO_SPEC = Spec("demo", {"config": DemoConfig})
"""the settings of ``regode demo``."""
