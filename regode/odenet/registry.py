"""MS-ODENet's model kinds, one registry entry each: everything ``register`` and ``train`` need to
know about a kind, as torch-free data (``regode --help`` reads it), and the cascades of kinds,
valid by rule.

A kind's entry (:class:`KindSpec`) names it, says whether it is linear, gives its default
L_reg weight, its polish schedule, how many network levels run under the polish, whether a cascade
with it is for pairs of subjects, and where its behaviour (regode.odenet.kinds, torch) and its
network live, imported only when a model is built.

Adding a kind is one entry in :data:`KINDS` (and its behaviour and network classes); a cascade
needs nothing: :data:`MODELS` lists every valid one.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
from dataclasses import dataclass, replace

from .. import config as check
from ..options import group, setting, validate


@dataclass(frozen=True)
class PolishLevel:
    """One level of a polish: how many Adam steps, on which pyramid level, on how coarse a lattice."""

    coarseness: int
    """the image pyramid level it runs on: 0 is the working grid, each next one has twice the
    spacing and is smoothed to match."""
    stride: int
    """the lattice step, in voxels of that level."""
    iterations: int


def _levels(default: tuple[PolishLevel, ...], help: str):
    return setting(default, help, flag="")


@dataclass(frozen=True)
class Schedule:
    """One polish: a short Adam fit of a stage's result (regode.odenet.polish)."""

    levels: tuple[PolishLevel, ...] = _levels((PolishLevel(0, 3, 30),), "Its levels, coarse first.")
    step: float = setting(
        0.4, "Adam's step for translations and control-point displacements.", unit="mm", flag="", low=0, above=True
    )
    angle_step: float = setting(
        0.01,
        "Linear kinds: Adam's step for the rotation vector (radians) or the matrix entries.",
        flag="",
        low=0,
        above=True,
    )
    lambda_fold: float = setting(10.0, "Deformable kinds: the folding penalty's weight.", flag="", low=0)
    lambda_grad: float = setting(5.0, "Deformable kinds: the weight of ||J - I||^2.", flag="", low=0)
    control_spacing: float | None = setting(
        None,
        "A B-spline correction's control spacing (the dense kind's, the fine level's); none: the model's own.",
        unit="mm",
        flag="",
        low=0,
        above=True,
        none="none",
    )
    ncc_candidate: bool = setting(
        False, "Linear kinds: a second polish with local NCC; the one whose local NCC is higher is kept.", flag=""
    )

    def __post_init__(self):
        validate(self)
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        for level in self.levels:
            check.require(
                whole(level.coarseness) and whole(level.stride) and whole(level.iterations)
                and level.coarseness >= 0 and level.stride >= 1 and level.iterations >= 1,
                f"bad polish level {level}: whole numbers, coarseness >= 0, stride and iterations >= 1",
            )  # fmt: skip


@dataclass(frozen=True)
class FineSchedule(Schedule):
    """The fine level: a B-spline correction of the last deformable stage's field on a pyramid of the
    images at the fine spacing (``RegisterConfig.fine_spacing``)."""

    levels: tuple[PolishLevel, ...] = _levels(
        (PolishLevel(1, 1, 30), PolishLevel(0, 3, 45)),
        "30 steps on the images at twice the fine spacing, then 45 at it.",
    )
    step: float = setting(
        1.0, "Adam's step for the control points, on every level.", unit="mm", flag="", low=0, above=True
    )
    lambda_fold: float = setting(300.0, "The folding penalty's weight.", flag="", low=0)
    lambda_grad: float = setting(1.0, "The weight of ||J - I||^2 with mutual information.", flag="", low=0)
    lambda_grad_ncc: float = setting(0.4, "The weight of ||J - I||^2 with local NCC.", flag="", low=0)
    control_spacing: float | None = setting(
        6.0, "The correction's control spacing.", unit="mm", flag="", low=0, above=True, none="none"
    )
    lattice_mm: float | None = setting(
        3.0,
        "Each level's lattice: every n-th voxel, n the smallest stride whose lattice is at least this many mm "
        "(none: the strides of levels).",
        unit="mm",
        flag="",
        low=0,
        above=True,
        none="none",
    )

    def for_metric(self, metric: str, spacing: float) -> FineSchedule:
        """The schedule for the similarity ``metric`` (``mi``, ``ncc``, or one per channel joined by
        ``+``) on images at ``spacing`` mm: its smoothness weight, and each level's stride from :attr:`lattice_mm`."""
        levels = self.levels
        if self.lattice_mm is not None:
            levels = tuple(
                replace(level, stride=max(1, math.ceil(self.lattice_mm / (spacing * 2**level.coarseness) - 1e-6)))
                for level in self.levels
            )
        # several channels (``ncc+mi``): their losses are averaged, and so are their weights
        names = metric.split("+")
        weight = sum(self.lambda_grad_ncc if name == "ncc" else self.lambda_grad for name in names) / len(names)
        return replace(self, levels=levels, lambda_grad=weight)


@dataclass(frozen=True)
class KindSpec:
    """A model kind (transformation family) of MS-ODENet."""

    name: str
    linear: bool
    """a linear kind's result joins the affine part (PREFIX0GenericAffine.mat); the others make
    PREFIX1Warp.nii.gz."""
    lambda_reg: float
    """the default weight of L_reg in training (the paper's: 2 B-spline, 10 dense)."""
    polish: Schedule
    """the polish after its network."""
    behaviour: str
    """``module:class`` of its behaviour (regode.odenet.kinds), imported when a model is built."""
    network: str
    """``module:class`` of its network (regode.odenet.networks)."""
    polished_levels: int | None = None
    """network levels run when the polish follows (coarse first); None: all but the finest."""
    inter_subject: bool = False
    """a cascade with this stage is for pairs of subjects: its deformable stage gets the fine level
    by default."""

    def load(self, what: str = "behaviour"):
        """The class named by :attr:`behaviour` or :attr:`network`."""
        module, name = getattr(self, what).split(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            "rigid",
            linear=True,
            lambda_reg=0.0,
            polished_levels=1,
            polish=Schedule(levels=(PolishLevel(1, 2, 40), PolishLevel(0, 3, 20)), step=0.5, angle_step=0.01),
            behaviour="regode.odenet.kinds:RigidKind",
            network="regode.odenet.networks:RigidNet",
        ),
        KindSpec(
            "affine",
            linear=True,
            lambda_reg=0.0,
            inter_subject=True,
            polish=Schedule(
                levels=(PolishLevel(1, 2, 60), PolishLevel(0, 3, 30)), step=0.5, angle_step=0.01, ncc_candidate=True
            ),
            behaviour="regode.odenet.kinds:AffineKind",
            network="regode.odenet.networks:AffineNet",
        ),
        KindSpec(
            "bspline",
            linear=False,
            lambda_reg=2.0,
            polish=Schedule(levels=(PolishLevel(0, 3, 30),), step=0.4),
            behaviour="regode.odenet.kinds:BSplineKind",
            network="regode.odenet.networks:BSplineNet",
        ),
        KindSpec(
            "dense",
            linear=False,
            lambda_reg=10.0,
            polish=Schedule(levels=(PolishLevel(0, 3, 40),), step=0.3, control_spacing=10.0),
            behaviour="regode.odenet.kinds:DenseKind",
            network="regode.odenet.networks:UNet",
        ),
    )
}
"""the MS-ODENet model kinds, in the order of a cascade's stages."""


def valid_cascade(names: list[str]) -> bool:
    """A cascade's rule: known kinds, each once, the linear ones first (in registry order), at most
    one deformable kind, last (as ANTs chains rigid, affine and SyN)."""
    order = list(KINDS)
    if not names or any(n not in KINDS for n in names) or len(set(names)) != len(names):
        return False
    if [order.index(n) for n in names] != sorted(order.index(n) for n in names):
        return False
    return all(KINDS[n].linear for n in names[:-1])


MODELS: tuple[str, ...] = tuple(
    "+".join(names)
    for size in range(1, len(KINDS) + 1)
    for names in itertools.permutations(KINDS, size)
    if valid_cascade(list(names))
)
"""``register --model``: every valid cascade, shortest first."""


def inter_subject(model: str) -> bool:
    """Whether a cascade is for pairs of subjects (a stage of it says so) and ends deformable: the
    fine level is then on by default."""
    names = model.split("+")
    return any(KINDS[n].inter_subject for n in names) and not KINDS[names[-1]].linear


PolishConfig = dataclasses.make_dataclass(
    "PolishConfig",
    [(name, Schedule, group(Schedule, default=spec.polish, cli=False)) for name, spec in KINDS.items()]
    + [("fine", FineSchedule, group(FineSchedule, cli=False))],
    frozen=True,
)
PolishConfig.__module__ = __name__
PolishConfig.__doc__ = """The polish schedules of a registration: one per kind (its registry entry's by
default) and the fine level's (regode.odenet.polish; why the defaults are what they are:
docs/concepts/register.md)."""
