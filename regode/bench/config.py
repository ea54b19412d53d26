"""The benchmark's configuration: the task, its synthetic motion and the methods. No torch here
(see regode.config), except that the method names are checked against the registry
(regode.bench.methods) when a config is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import config as check

TASKS = ("rigid", "deformable", "rigid+deformable")
"""synthetic motion with exact ground truth (the MS-ODENet paper's protocol)."""
ALL_TASKS = TASKS + ("inter-subject",)
PAIRINGS = ("different", "same")


@dataclass(frozen=True)
class MotionConfig:
    """Distributions of the synthetic motion; defaults are the paper's."""

    max_rotation: float = 75.0
    """rigid task: rotations U(-max, max) degrees about each axis (x, y, z; ITK Euler order)."""
    max_translation: float = 20.0
    """rigid task: translations U(-max, max) mm on each axis."""
    hybrid_max_rotation: float = 40.0
    """rigid+deformable task: rotation range in degrees."""
    hybrid_max_translation: float = 10.0
    """rigid+deformable task: translation range in mm."""
    bspline_sigma: float = 8.0
    """deformable tasks: control-point displacements N(0, sigma^2) mm on each axis."""
    control_spacing: float = 40.0
    """deformable tasks: B-spline control-point spacing in mm (coarse enough to stay invertible)."""
    inter_max_rotation: float = 10.0
    """inter-subject task on a folder of one subject (its image against itself moved by a known
    affine and deformation, as two subjects in a common space differ): rotation range in degrees."""
    inter_max_translation: float = 10.0
    inter_max_scale: float = 0.1
    """scales exp(U(-s, s)) per axis."""
    inter_max_shear: float = 0.05
    """shears U(-h, h), three of them."""

    def __post_init__(self):
        check.at_least(self, 0, "max_rotation", "max_translation", "hybrid_max_rotation", "hybrid_max_translation", "bspline_sigma",
                       "inter_max_rotation", "inter_max_translation", "inter_max_scale", "inter_max_shear")
        check.positive(self, "control_spacing")


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a benchmark run (saved in the JSON)."""

    data: str
    """dataset folder: DIR/<subject>/<contrast>.nii.gz, optional seg.nii.gz or labels.nii.gz."""
    task: str = "rigid"
    """rigid, deformable, rigid+deformable (synthetic motion) or inter-subject (pairs of subjects;
    with one subject, its image against itself moved by a known affine and deformation)."""
    methods: tuple[str, ...] = ("identity",)
    """method names, as in regode.bench.methods.METHODS."""
    pairs: int = 5
    """number of cases."""
    seed: int = 0
    """seed of case selection, motion and the methods."""
    resolution: float | None = 2.0
    """isotropic working spacing in mm (None: the fixed image's own grid)."""
    threads: int = 0
    """CPU threads for every method (0: all cores)."""
    contrasts: str = "different"
    """synthetic-motion tasks: the moving image is another contrast of the subject (different)
    or the same contrast (same, a mono-modal case)."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """synthetic motion distributions."""

    def __post_init__(self):
        from .methods import METHODS  # the registry imports torch; --help reads this module without it

        object.__setattr__(self, "methods", tuple(self.methods))
        check.one_of(self, "task", ALL_TASKS)
        check.one_of(self, "contrasts", PAIRINGS)
        check.at_least(self, 1, "pairs")
        check.at_least(self, 0, "threads")
        check.require(self.resolution is None or (isinstance(self.resolution, (int, float)) and self.resolution > 0),
                      f"--resolution must be a positive spacing in mm (or 0 for the native grid), not {self.resolution}")
        check.require(bool(self.methods), "--methods names no method")
        unknown = [m for m in self.methods if m not in METHODS]
        check.require(not unknown, f"unknown method(s) {', '.join(unknown)}: available {', '.join(METHODS)}")
