"""MS-ODENet's configurations: the model, its training, the registration and its polish.

No torch here (see regode.config): the command line reads its choices and defaults from these
classes. :data:`KINDS` names the model kinds; their behaviour lives in regode.odenet.kinds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import config as check
from ..config import GENERATORS
from ..errors import RegodeError

KINDS = ("rigid", "affine", "bspline", "dense")
"""the MS-ODENet model kinds (transformation families), registered in regode.odenet.kinds."""
MODELS = ("rigid", "affine", "bspline", "dense", "rigid+affine", "rigid+bspline", "rigid+dense", "affine+bspline", "affine+dense",
          "rigid+affine+bspline", "rigid+affine+dense")
"""``register --model``: one kind, or a cascade of kinds run in order (the way ANTs chains rigid,
affine and SyN: the linear kinds first, at most one deformable kind last)."""
LINEAR_KINDS = ("rigid", "affine")
"""the kinds whose result joins the linear part (the rest are deformable)."""
DEFAULT_LAMBDA_REG = {"rigid": 0.0, "affine": 0.0, "bspline": 2.0, "dense": 10.0}
"""the paper's weights of L_reg per kind."""
SIMILARITIES = ("mi", "content")
LEARN = ("all", "step")
"""what training optimises: every parameter, or only each level's force step (the networks'
learned terms stay as they start: the step sizes of a multi-scale gradient flow, learned)."""
FINE_METRICS = ("auto", "mi", "ncc")
"""the fine level's similarity: auto (regode.contrast: local NCC for one contrast, MI across), or either."""
INTER_SUBJECT = ("affine+bspline", "affine+dense", "rigid+affine+bspline", "rigid+affine+dense")
"""the cascades for pairs of subjects (or a subject and a template): the fine level is on by default."""
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
        raise RegodeError(f"bad --schedule {text!r}: write e.g. A(1e-3)-A(1e-3)-F(0.1) (F Euler, R rk4, A adaptive Heun)")
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

    kind: str = "rigid"
    """one of :data:`KINDS`."""
    levels: int = 3
    """pyramid levels L (factor 2 per level)."""
    horizon: float = 3.0
    """integration time T; level l is solved on [(l-1)T/L, lT/L]."""
    schedule: str = ""
    """solver per level, coarse to fine (empty: Euler with steps of 0.25, 0.5 on the finest of 3 levels)."""
    spacing: float = 2.0
    """finest working spacing in mm (isotropic)."""
    width: int = 16
    """channels of the first conv layer."""
    control_spacing: float = 20.0
    """B-spline control-point spacing in mm."""

    def __post_init__(self):
        check.one_of(self, "kind", KINDS)
        check.at_least(self, 1, "levels")
        check.at_least(self, 2, "width")
        check.positive(self, "horizon", "spacing", "control_spacing")
        if not self.schedule:  # every level F(0.25); 4 + 4 + 2 function evaluations with 3 levels
            object.__setattr__(self, "schedule", "F(0.25)-F(0.25)-F(0.5)" if self.levels == 3 else "-".join(["F(0.25)"] * self.levels))
        parse_schedule(self.schedule, self.levels)


@dataclass(frozen=True)
class MotionRange:
    """Random motion used in training (rotations as ITK Euler angles about x, y, z)."""

    max_rotation: float = 80.0
    """degrees, U(-a, a) per axis (rigid)."""
    max_translation: float = 20.0
    """mm, U(-t, t) per axis (rigid, affine)."""
    max_scale: float = 0.15
    """affine: scale factors exp(U(-s, s)) per axis (0.15: about 0.86 to 1.16, the spread of adult
    heads about a template)."""
    max_shear: float = 0.1
    """affine: the three shears U(-h, h)."""
    max_sigma: float = 10.0
    """B-spline control displacement sd in mm, drawn U(0, max) per pair (deformable)."""
    control_spacings: tuple[float, ...] = (30.0, 40.0, 50.0)
    """B-spline control spacings (mm) of the deformable motion, one drawn per pair."""
    ramp_pairs: int = 0
    """curriculum: the motion ranges grow linearly from 20 % to 100 % over the first ``ramp_pairs``
    training pairs (0: no ramp)."""

    def __post_init__(self):
        check.at_least(self, 0, "max_rotation", "max_translation", "max_scale", "max_shear", "max_sigma", "ramp_pairs")
        check.require(len(self.control_spacings) > 0 and all(s > 0 for s in self.control_spacings),
                      "the motion's control spacings must be positive")

    def at(self, index: int) -> "MotionRange":
        """The ranges for training pair ``index``."""
        if not self.ramp_pairs or index >= self.ramp_pairs:
            return self
        f = 0.2 + 0.8 * index / self.ramp_pairs
        return MotionRange(self.max_rotation * f, self.max_translation * f, self.max_scale * f, self.max_shear * f,
                           self.max_sigma * f, self.control_spacings, 0)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines an MS-ODENet training run (saved in every checkpoint)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str | None = None
    """dataset folder (benchmark layout); None: synthetic data."""
    label_maps: tuple[str, ...] = ()
    """label-map images to render as well as random heads (synthetic data)."""
    generator: str = "heads"
    """synthetic data: ``heads`` (random head-shaped label maps, regode.synthetic) or ``brain``
    (brain-like subjects from the MNI152 template's tissue maps, regode.anatomy)."""
    steps: int = 2000
    batch: int = 2
    lr: float = 1e-4
    learn: str = "all"
    """:data:`LEARN`: every parameter, or only the force steps."""
    init: str | None = None
    """a model file (same kind and architecture) whose weights the run starts from (None: a new
    network: zero learned terms, default steps)."""
    similarity: str = "mi"
    """L_sim: "mi" (mutual information) or "content" (||E3D(warped) - E3D(fixed)||^2 with the
    content encoder ``encoder``)."""
    encoder: str | None = None
    """content similarity: the encoder checkpoint (None: the shipped ``weights/encoder.pt``)."""
    lambda_sim: float = 1.0
    lambda_self: float = 1.0
    lambda_reg: float | None = None
    """None: the kind's :data:`DEFAULT_LAMBDA_REG`."""
    size: int = 96
    """training volumes are size^3 voxels at the model's spacing."""
    seed: int = 0
    adjoint: bool = False
    """backpropagate with torchdiffeq's adjoint method instead of through the solver."""
    checkpoint_every: int = 25
    validate_every: int = 100
    val_pairs: int = 8
    validate_data: tuple[str, ...] = ()
    """dataset folders (benchmark layout) whose subjects, moved by fixed random motions of the
    training range, are validated on as well (``val_rmse_mm_<folder name>``): measurement on real
    images (trained on only if the same folder is also ``data``)."""
    motion: MotionRange = field(default_factory=MotionRange)

    def __post_init__(self):
        check.one_of(self, "similarity", SIMILARITIES)
        check.one_of(self, "generator", GENERATORS)
        check.one_of(self, "learn", LEARN)
        names = [Path(folder).name for folder in self.validate_data]
        check.require(all(names) and len(set(names)) == len(names),
                      "--validate-data folders need distinct, non-empty names (their figures are logged by name)")
        check.require(not (self.label_maps and self.generator != "heads"), "--label-map renders with the heads generator only")
        check.at_least(self, 1, "steps", "batch", "checkpoint_every", "validate_every", "val_pairs")
        check.at_least(self, 16, "size")
        check.positive(self, "lr")
        if self.lambda_reg is None:
            object.__setattr__(self, "lambda_reg", DEFAULT_LAMBDA_REG[self.model.kind])
        check.at_least(self, 0, "lambda_sim", "lambda_self", "lambda_reg")


def curriculum_pairs(curriculum: float, steps: int, batch: int) -> int:
    """The training pairs over which the motion ranges grow: a ``curriculum`` fraction of the run."""
    check.require(0 <= curriculum <= 1, f"--curriculum must be between 0 and 1, not {curriculum}")
    return int(curriculum * steps * batch)


@dataclass(frozen=True)
class PolishLevel:
    """One level of a polish: how many Adam steps, on which pyramid level, on how coarse a lattice."""

    coarseness: int
    """the image pyramid level it runs on: 0 is the working grid, each next one has twice the
    spacing and is smoothed to match."""
    stride: int
    """the lattice step, in voxels of that level."""
    iterations: int


@dataclass(frozen=True)
class PolishConfig:
    """The polish after each network (regode.odenet.polish): a short mutual-information fit of its
    result. The defaults were measured on BraTS (docs/msodenet.md)."""

    rigid: tuple[PolishLevel, ...] = (PolishLevel(1, 2, 40), PolishLevel(0, 3, 20))
    """a rigid correction: 40 steps on an 8 mm lattice of the 4 mm images, then 20 on a 6 mm lattice
    of the 2 mm images."""
    affine: tuple[PolishLevel, ...] = (PolishLevel(1, 2, 60), PolishLevel(0, 3, 30))
    """an affine correction (12 unknowns): as the rigid one, with half as many steps again."""
    affine_ncc_candidate: bool = True
    """a second affine polish with local NCC, the one whose local NCC is higher kept
    (regode.odenet.polish.polish_affine_chosen)."""
    deformable: tuple[PolishLevel, ...] = (PolishLevel(0, 3, 30),)
    """the B-spline's control points: 30 steps (of :attr:`bspline_step`) on a 6 mm lattice of the
    2 mm images. 40 steps of 0.3 mm until a ninth session: on 32 BraTS pairs (seeds 0–3, 8 each) 30
    of 0.4 mm gave the same mean Dice and RMSE(phi) to 0.07 Dice and 0.004 mm, on the deformable and
    rigid+deformable tasks, for a quarter fewer steps (docs/msodenet.md, "A shorter B-spline polish").
    Not the dense model's correction (:attr:`dense`, :attr:`dense_step`) nor the fine level
    (:attr:`fine`, :attr:`fine_step`)."""
    dense: tuple[PolishLevel, ...] = (PolishLevel(0, 3, 40),)
    """the dense field's B-spline correction: 40 steps (of :attr:`dense_step`) on a 6 mm lattice of
    the 2 mm images (30 of 0.4 mm left RMSE(phi) 0.01–0.02 mm worse on each of the 4 seeds)."""
    rotation_step: float = 0.01
    """Adam's step for the rotation vector (radians: about 0.6° per step at the start); every step
    decays linearly to a tenth over a level."""
    translation_step: float = 0.5
    """Adam's step for the translation (mm)."""
    matrix_step: float = 0.01
    """Adam's step for the entries of an affine correction's matrix (as the rotation's: 0.5 mm at
    50 mm from the centre; half of it left the phantom of tests/test_odenet.py twice as far off)."""
    bspline_step: float = 0.4
    """Adam's step for the B-spline model's control-point displacements (mm); the dense model's
    correction has :attr:`dense_step`, the fine level :attr:`fine_step`."""
    dense_step: float = 0.3
    """Adam's step for the control points of the dense field's correction (mm)."""
    lambda_fold: float = 10.0
    lambda_grad: float = 5.0
    """the folding penalty and the weight of ``||J - I||^2`` (as fit-field's defaults)."""
    dense_control_spacing: float = 10.0
    """the dense polish's correction: a B-spline with half the B-spline model's control spacing (mm)."""
    fine: tuple[PolishLevel, ...] = (PolishLevel(1, 1, 30), PolishLevel(0, 3, 45))
    """the fine level (``RegisterConfig.fine_spacing``): a B-spline correction of the last deformable
    stage's field fitted on a pyramid of the images at the fine spacing, here 30 steps on the images
    at twice the fine spacing, then 45 at the fine spacing (lattices of every voxel and every third,
    or the strides ``fine_lattice_mm`` sets). The coarse half carries the larger corrections: on
    NiChart pairs at 2 mm (tuning pairs, not the reported ones) 63.5 -> 65.0 Dice on 6 pairs and
    65.3 -> 66.7 on 4, for 1.5 to 1.9 s more per pair (docs/benchmarks.md, "A pyramid for the fine level")."""
    fine_lattice_mm: float | None = 3.0
    """the fine levels' lattices: every n-th voxel of each level's images, n the smallest stride
    whose lattice is at least this many mm (at a 2 mm fine spacing: every voxel of the 4 mm images,
    every second of the 2 mm ones; at 1 mm: every second voxel at 2 mm, every third at 1 mm), so
    that the cost follows the head's size, not its voxels. None: the strides of ``fine``."""
    fine_control_spacing: float = 6.0
    """the fine level's B-spline control spacing (mm)."""
    fine_step: float = 1.0
    """Adam's step for the fine level's control points (mm), on every level of it. Chosen before the
    coarse level was added: on a 4 mm lattice of 2 mm images, 45 steps of 1 mm against 60 of 0.3 mm
    on every third voxel, on 4 NiChart pairs (tuning pairs, not the reported ones): 62.6 -> 65.3
    Dice, 7.6 -> 8.1 s (docs/benchmarks.md, "The fine level's lattice in mm")."""
    fine_lambda_grad_mi: float = 1.0
    fine_lambda_grad_ncc: float = 0.4
    """the fine level's smoothness weight per similarity: the 2 mm polish's 5 held the 1 mm fit back
    (aseg pair of docs/benchmarks.md: mutual information 96.7 -> 96.9 Dice, 0.28 -> 0.21 mm with 1;
    local NCC, whose gradients are about ten times smaller, 95.7 -> 96.5, 0.44 -> 0.33 mm with 0.5).
    Local NCC's 0.5 became 0.4 with :attr:`fine_lambda_fold` (a fifth session)."""
    fine_lambda_fold: float = 300.0
    """the fine level's folding penalty. The fine level was the only stage that folded (a few voxels
    in 10^5 between NiChart subjects); with 300 instead of the polish's 10, and local NCC's smoothness
    weight 0.4 instead of 0.5, the NiChart tuning pairs (not the reported ones) gained on all three
    counts: 6 pairs 64.84 -> 65.25 Dice, folding 0.0031 -> 0.0006 %, SDlogJ 0.322 -> 0.318; 4 pairs
    67.22 -> 67.48, 0.0036 -> 0.0006 %, 0.337 -> 0.327 (docs/benchmarks.md, "Less folding in the fine level")."""

    def __post_init__(self):
        check.positive(self, "rotation_step", "translation_step", "matrix_step", "bspline_step", "dense_step", "dense_control_spacing",
                       "fine_control_spacing", "fine_step")
        check.require(self.fine_lattice_mm is None or 0 < self.fine_lattice_mm < math.inf,
                      f"fine_lattice_mm must be a positive number of mm, not {self.fine_lattice_mm}")
        check.at_least(self, 0, "lambda_fold", "lambda_grad", "fine_lambda_grad_mi", "fine_lambda_grad_ncc", "fine_lambda_fold")
        for level in self.rigid + self.affine + self.deformable + self.dense + self.fine:
            check.require(level.coarseness >= 0 and level.stride >= 1 and level.iterations >= 1,
                          f"bad polish level {level}: coarseness >= 0, stride and iterations >= 1")

    def fine_levels(self, spacing: float) -> tuple[PolishLevel, ...]:
        """The fine levels on a pyramid of images at ``spacing`` mm (a level of coarseness ``c`` is
        at ``spacing * 2**c``; ``fine_lattice_mm`` sets each level's stride)."""
        if self.fine_lattice_mm is None:
            return self.fine
        return tuple(replace(level, stride=max(1, math.ceil(self.fine_lattice_mm / (spacing * 2 ** level.coarseness) - 1e-6)))
                     for level in self.fine)


POLISHED_LEVELS = {"rigid": 1}
"""levels a network of a kind integrates by default when the polish follows, where fewer than all
but the finest: the rigid network on its coarsest level only (8 mm for the shipped model). Its 4 mm level added nothing that the
rigid polish's own 4 mm steps do not: on 32 BraTS pairs (seeds 0-3, 8 each) the rigid task's mean
Dice / RMSE(phi) were 93.10 / 0.488 mm with it and without it, rigid+bspline's 77.5 / 2.67 and
77.6 / 2.67 mm, for 0.1 to 0.2 s less per pair. The B-spline network's 4 mm level does earn its
place (without it 0.03 mm worse on 16 pairs); the affine one was not measured and keeps it
(docs/msodenet.md, "The rigid network's 4 mm level")."""


@dataclass(frozen=True)
class RegisterConfig(check.PairRun):
    """Everything that defines a registration (saved in ``PREFIXregode.json``); the start, masks,
    device, threads and seed are :class:`~regode.config.PairRun`'s."""

    model: str = "rigid"
    """one of :data:`MODELS`."""
    checkpoints: tuple[str, ...] = ()
    """model files replacing the shipped ``weights/<kind>.pt`` of the kind each holds."""
    center_of_mass: bool = True
    """start from the translation between the centres of the images' head masks
    (regode.preprocess.head_center)."""
    principal_axes: bool = True
    """models that start with a linear (rigid or affine) stage: start from the best principal-axes alignment (or the
    head centres' translation, whichever shares more mutual information); see regode.alignment."""
    polish: bool = True
    """after each network, a short mutual-information optimisation of its result: the network
    brings the pair near the truth, the optimiser lands on it."""
    polish_schedule: PolishConfig = field(default_factory=PolishConfig)
    network_levels: int | None = None
    """how many of each network's pyramid levels it integrates, coarse first. None: all without the
    polish; with it, :data:`POLISHED_LEVELS` for its kind, else all but the finest. The polish runs
    on the finest level anyway, and there one network evaluation costs about as much as ten polish
    steps (80 against 9 ms on a 2 mm BraTS pair): without the networks' finest level the default
    kept its accuracy on BraTS (within 0.2 Dice) and took 17 to 30 % less time (docs/msodenet.md,
    "The networks' finest level")."""
    fine_spacing: float | None = None
    """a fine level after the last deformable stage, at this spacing (mm; 0: none). None: the
    model's default, the fixed image's spacing (at least 1 mm) for the :data:`INTER_SUBJECT`
    cascades, none for the others. Skipped where coarser than the model's working spacing; at
    that spacing itself it still runs (a finer correction, with the pair's similarity)."""
    metric: str = "auto"
    """the fine level's similarity, one of :data:`FINE_METRICS`."""

    def __post_init__(self):
        super().__post_init__()
        check.one_of(self, "model", MODELS)
        check.one_of(self, "metric", FINE_METRICS)
        check.require(self.fine_spacing is None or self.fine_spacing >= 0, f"--fine-spacing must be 0 or more mm, not {self.fine_spacing}")
        check.require(not self.fine_spacing or not all(name in LINEAR_KINDS for name in self.stages),
                      f"--fine-spacing refines a deformable stage; --model {self.model} has none")
        check.require(self.polish or not self.fine_spacing, "--fine-spacing is a polish at the image's resolution: not with --no-polish")
        check.require(self.network_levels is None or (isinstance(self.network_levels, int) and not isinstance(self.network_levels, bool)
                                                      and self.network_levels >= 1),
                      f"--network-levels must be a whole number, 1 or more, not {self.network_levels!r}")
        check.require(self.polish or not (self.fixed_mask or self.moving_mask),
                      "--fixed-mask and --moving-mask act on the polish: with --no-polish they would do nothing")
        object.__setattr__(self, "checkpoints", tuple(str(p) for p in self.checkpoints))

    @property
    def stages(self) -> list[str]:
        """The model kinds, in the order they run."""
        return self.model.split("+")

    def levels_run(self, kind: str, levels: int) -> int:
        """The pyramid levels that a ``kind`` network of ``levels`` levels integrates (coarse first)."""
        if self.network_levels is None:
            return min(levels, POLISHED_LEVELS.get(kind, max(1, levels - 1))) if self.polish else levels
        if self.network_levels > levels:
            raise RegodeError(f"--network-levels {self.network_levels}: the {kind} model has {levels} pyramid levels")
        return self.network_levels

    @property
    def fine_request(self) -> float | None:
        """The fine level asked for: mm, None for the fixed image's spacing, 0 for none."""
        if self.fine_spacing is not None:
            return self.fine_spacing
        return None if self.model in INTER_SUBJECT and self.polish else 0.0
