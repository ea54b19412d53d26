"""The benchmark's configuration: the task, its synthetic motion and the methods. No torch here
(see regode.config), except that the method names are checked against the registry
(regode.bench.methods) when a config is built."""

from __future__ import annotations

from dataclasses import dataclass

from .. import config as check
from ..options import REQUIRED, Spec, group, setting, validate

TASKS = ("rigid", "deformable", "rigid+deformable")
"""synthetic motion with exact ground truth (the MS-ODENet paper's protocol)."""
ALL_TASKS = TASKS + ("inter-subject",)
PAIRINGS = ("different", "same")
SUBJECT_PAIRINGS = ("random", "consecutive")


@dataclass(frozen=True)
class MotionConfig:
    """Distributions of the synthetic motion; defaults are the MS-ODENet paper's."""

    max_rotation: float = setting(
        75.0, "Rigid task: rotations U(-a, a) about each axis (x, y, z; ITK Euler order).", unit="degrees", low=0
    )
    max_translation: float = setting(20.0, "Rigid task: translations U(-t, t) on each axis.", unit="mm", low=0)
    hybrid_max_rotation: float = setting(40.0, "rigid+deformable task: rotation range.", unit="degrees", low=0)
    hybrid_max_translation: float = setting(10.0, "rigid+deformable task: translation range.", unit="mm", low=0)
    bspline_sigma: float = setting(
        8.0, "Deformable tasks: control-point displacements N(0, sigma^2) on each axis.", unit="mm", low=0
    )
    control_spacing: float = setting(
        40.0,
        "Deformable tasks: B-spline control-point spacing (coarse enough to stay invertible).",
        unit="mm",
        low=0,
        above=True,
    )
    inter_max_rotation: float = setting(
        10.0,
        "Inter-subject task on a folder of one subject (its image against itself moved by a "
        "known affine and deformation): rotation range.",
        unit="degrees",
        low=0,
    )
    inter_max_translation: float = setting(
        10.0, "Inter-subject task on one subject: translation range.", unit="mm", low=0
    )
    inter_max_scale: float = setting(0.1, "Inter-subject task on one subject: scales exp(U(-s, s)) per axis.", low=0)
    inter_max_shear: float = setting(0.05, "Inter-subject task on one subject: the three shears U(-h, h).", low=0)

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a benchmark run (saved in the JSON)."""

    data: str = setting(
        REQUIRED, "Dataset folder: DIR/<subject>/<contrast>.nii.gz (+ seg.nii.gz or labels.nii.gz).", path=True
    )
    task: str = setting(
        "rigid",
        "Synthetic motion to undo, or inter-subject: pairs of subjects (a folder of one subject: itself moved "
        "by a known affine and deformation).",
        choices=ALL_TASKS,
    )
    methods: tuple[str, ...] = setting(
        ("identity",),
        "Comma-separated: identity, ants:Rigid, ants:SyN, ants:SyNRA, regode:rigid, "
        "regode:rigid+bspline, regode:nir, ...",
        separator=",",
    )
    pairs: int = setting(5, "Number of cases.", low=1)
    seed: int = setting(0, "Seed of case selection, motion and the methods.")
    resolution: float = setting(2.0, "Isotropic working spacing (0: each fixed image's own grid).", unit="mm", low=0)
    threads: int = setting(0, "CPU threads for every method (0: all cores).", low=0)
    contrasts: str = setting(
        "different",
        "Synthetic-motion tasks: the moving image is another contrast of the subject (different) or "
        "the same contrast (same).",
        choices=PAIRINGS,
    )
    pairing: str = setting(
        "random",
        "Inter-subject task: the pairs of subjects drawn at random (seeded), or consecutive: each subject moved to "
        "the next in numeric order of their names (Subj1 to Subj2, ..., Subj11 to Subj12; --pairs at most one "
        "fewer than the subjects).",
        choices=SUBJECT_PAIRINGS,
    )
    motion: MotionConfig = group(MotionConfig)

    def __post_init__(self):
        from .methods import METHODS  # the registry imports torch; --help reads this module without it

        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "data", str(self.data))
        if self.resolution is None:  # records of earlier versions: None was the native grid
            object.__setattr__(self, "resolution", 0.0)
        validate(self)
        check.require(bool(self.methods), "--methods names no method")
        unknown = [m for m in self.methods if m not in METHODS]
        check.require(not unknown, f"unknown method(s) {', '.join(unknown)}: available {', '.join(METHODS)}")


SPEC = Spec("bench", {"config": BenchConfig})
"""the settings of ``regode bench``."""
