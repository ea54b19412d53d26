"""Run configurations: frozen dataclasses whose fields are declared options (regode.options).

Every run (register, fit-field, train, bench, cohort) is described by a frozen dataclass. Each
field is declared once with :func:`~regode.options.setting` (type, default, unit, range, help,
flag); ``__post_init__`` checks the fields against their declarations
(:func:`~regode.options.validate`) and what involves several fields with :func:`require`. A bad
value raises :class:`~regode.errors.RegodeError` naming the command-line option (``--lr``), so
the library and the command line refuse it with the same line. The resolved config is saved
beside every output (``dataclasses.asdict``) and rebuilt from it with :func:`from_dict`.

This module and the config modules of the method packages import no torch: the command line
reads its choices and defaults from them, and ``regode --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
from os import PathLike

from .errors import RegodeError
from .options import REQUIRED, Spec, from_dict, setting, validate  # noqa: F401  (from_dict: rebuilt configs)

DEVICES = ("auto", "cpu", "cuda")
"""``--device``: auto takes a CUDA GPU when torch sees one (regode.device)."""
GENERATORS = ("heads", "brain")
"""synthetic training data: random heads (regode.synthetic) or brain-like subjects (regode.anatomy)."""
INTERPOLATIONS = ("linear", "nearest", "label", "bspline")
SKULL_STRIP = ("auto", "yes", "no")
"""``--skull-strip`` (regode.heads): auto extracts the brain of a head registered to a brain."""
"""``regode warp --interp`` (regode.warp.INTERPOLATORS): label is ANTs' GenericLabel."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise RegodeError(message)


FIXED_HELP = (
    "Fixed (reference) image, or mni152: the MNI ICBM152 2009 T1 template (brain-extracted, 1 mm, from nilearn); "
    "repeated, one per channel."
)


@dataclasses.dataclass(frozen=True)
class PairInputs:
    """The files of one registration (``register``, ``fit-field``): what a replay reads again."""

    fixed: tuple[str, ...] = setting(REQUIRED, FIXED_HELP, short="-f", path=True)
    moving: tuple[str, ...] = setting(
        REQUIRED,
        "Moving image; repeated, one per channel in --fixed's order (register: T1 and FLAIR of one subject "
        "against T1 and FLAIR of another).",
        short="-m",
        path=True,
    )
    moving_labels: str | None = setting(
        None, "Label image on the moving grid, warped with label interpolation.", path=True
    )
    qc: bool = setting(True, "Write PREFIXqc.png (planes before and after) and QC figures in PREFIXregode.json.")

    def __post_init__(self):
        for name in ("fixed", "moving"):  # one file, or one per channel
            value = getattr(self, name)
            one = isinstance(value, (str, PathLike))
            object.__setattr__(self, name, (str(value),) if one else tuple(map(str, value)))
        if self.moving_labels is not None:
            object.__setattr__(self, "moving_labels", str(self.moving_labels))
        validate(self)
        require(len(self.fixed) > 0 and len(self.moving) > 0, "--fixed and --moving need a value")
        require(
            len(self.fixed) == len(self.moving),
            f"{len(self.fixed)} --fixed and {len(self.moving)} --moving images: give one moving image per fixed "
            "channel, in the same order",
        )


@dataclasses.dataclass(frozen=True)
class PairRun:
    """What every registration of one pair has, whatever the method (``register``, ``fit-field``):
    the start, the masks, the device and threads, the seed, the inverse's iterations."""

    initial_transform: tuple[str, ...] = setting(
        (),
        "Linear transform file(s) to start from, fixed -> moving in -t order (e.g. register's "
        "PREFIX0GenericAffine.mat); "
        "'\\[f.mat,1]' inverts; repeatable.",
        path=True,
    )
    fixed_mask: str | None = setting(
        None,
        "Only fixed points inside this image's non-zero voxels count in the similarity (ANTs' -x): lesions, "
        "partial fields of view.",
        path=True,
    )
    moving_mask: str | None = setting(
        None, "Only points that map inside this image's non-zero voxels count.", path=True
    )
    device: str = setting("auto", "auto (a CUDA GPU when torch sees one), cpu or cuda.", choices=DEVICES)
    threads: int | None = setting(None, "CPU threads (default and 0: all cores).", low=0)
    seed: int = setting(
        0, "Random seed (sample lattices, initial fields): the same seed and threads give the same outputs."
    )
    inverse_iterations: int = setting(
        30, "Fixed-point iterations of the inverse warp (PREFIX1InverseWarp.nii.gz).", low=1
    )
    skull_strip: str = setting(
        "auto",
        "Extract the brain of a head (deepbet) and register brain to brain; the transforms apply to the head. "
        "auto: when one image is a brain (mni152, --fixed-is-brain, --moving-is-brain) and the other looks like "
        "a head; yes: every image not named a brain; no: never.",
        choices=SKULL_STRIP,
    )
    fixed_is_brain: bool = setting(False, "The fixed image is brain-extracted (mni152 always is).")
    moving_is_brain: bool = setting(False, "The moving image is brain-extracted (mni152 always is).")
    brain_threshold: float = setting(
        0.5, "Brain extraction: deepbet's probability above which a voxel is brain.", low=0, above=True, high=1
    )

    def __post_init__(self):
        object.__setattr__(self, "initial_transform", tuple(str(p) for p in self.initial_transform))
        for name in ("fixed_mask", "moving_mask"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        validate(self)


@dataclasses.dataclass(frozen=True)
class WarpConfig:
    """``regode warp``: an image resampled through ITK/ANTs transforms onto a reference grid."""

    input: str = setting(REQUIRED, "Image to resample (moving space).", short="-i", path=True)
    reference: str = setting(
        REQUIRED,
        "Image whose grid the output takes (fixed space), or mni152 (the MNI ICBM152 2009 template's grid).",
        short="-r",
        path=True,
    )
    transforms: tuple[str, ...] = setting(
        (),
        "Transform file, repeatable, in antsApplyTransforms order: the last -t moves the image first "
        "(e.g. -t 1Warp.nii.gz -t 0GenericAffine.mat). '\\[file.mat,1]' inverts a linear transform. None: identity "
        "(plain resampling).",
        flag="--transform",
        short="-t",
        path=True,
    )
    interp: str = setting(
        "linear", "Interpolation: label = ANTs GenericLabel (no new labels).", short="-n", choices=INTERPOLATIONS
    )
    default_value: float = setting(0.0, "Value outside the input image.")
    threads: int | None = setting(None, "CPU threads (default and 0: all cores).", low=0)

    def __post_init__(self):
        object.__setattr__(self, "transforms", tuple(str(t) for t in self.transforms))
        for name in ("input", "reference"):
            object.__setattr__(self, name, str(getattr(self, name)))
        validate(self)


WARP_SPEC = Spec("warp", {"config": WarpConfig})
"""the settings of ``regode warp``."""


@dataclasses.dataclass(frozen=True)
class BrainExtractInputs:
    """The file of one brain extraction (``brain-extract``): what a replay reads again."""

    input: str = setting(REQUIRED, "T1-weighted image of a head.", short="-i", path=True)
    qc: bool = setting(True, "Write PREFIXqc.png: the mask's outline over the image in three planes.")

    def __post_init__(self):
        object.__setattr__(self, "input", str(self.input))
        validate(self)


@dataclasses.dataclass(frozen=True)
class BrainExtractConfig:
    """``regode brain-extract``: the brain of a T1-weighted head, by deepbet (regode.brain)."""

    threshold: float = setting(
        0.5, "deepbet's probability above which a voxel is brain (lower: a larger mask).", low=0, above=True, high=1
    )
    device: str = setting("auto", "auto (a CUDA GPU when torch sees one), cpu or cuda.", choices=DEVICES)
    threads: int | None = setting(None, "CPU threads (default and 0: all cores).", low=0)

    def __post_init__(self):
        validate(self)


BRAIN_SPEC = Spec("brain-extract", {"inputs": BrainExtractInputs, "config": BrainExtractConfig})
"""the settings of ``regode brain-extract``."""
