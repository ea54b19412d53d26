"""Configurations of ``regode fit-field`` (NIR): the neural field and the fit. No torch here (see
regode.config): the command line reads its choices and defaults from these classes."""

from __future__ import annotations

from dataclasses import dataclass

from .. import config as check
from ..options import Spec, group, setting, validate

ENCODINGS = ("grid", "fourier", "none")
ACTIVATIONS = ("relu", "sine")
SAMPLERS = ("downsize", "patch", "hybrid")
METRICS = ("mi", "ncc", "mse", "content", "mind", "auto")
FEATURE_METRICS = ("content", "mind")
"""metrics compared as feature volumes computed once per image."""
SOLVERS = ("euler", "midpoint", "rk4")
PRESETS = {
    "inter-subject": {
        "affine": True,
        "center_of_mass": True,
        "lambda_grad": 1.0,
        "lambda_fold": 100.0,
        "metric": "auto",
        "fine_spacing": None,
    },
}
"""``fit-field --preset``: settings for a kind of pair, each applied where neither an option nor a
config file gives it. inter-subject (two subjects, or a subject and a template): an affine stage
from the head centres, a more flexible field, and a fine level at the fixed image's spacing
(docs/concepts/fit-field.md)."""


@dataclass(frozen=True)
class FieldConfig:
    """The neural field's architecture (regode.nir.fields)."""

    encoding: str = setting(
        "grid",
        "grid: multi-resolution feature grids (fast); fourier: Fourier features; none: raw coordinates "
        "(with --activation sine: SIREN).",
        choices=ENCODINGS,
    )
    activation: str = setting("relu", "MLP activation (sine: SIREN initialisation).", choices=ACTIVATIONS)
    hidden: int = setting(32, "Width of the MLP's hidden layers.", low=1)
    layers: int = setting(2, "Hidden layers of the MLP.", low=1)
    grid_levels: int = setting(4, "Feature grids (grid encoding).", low=1)
    grid_coarsest: float = setting(
        32.0, "Node spacing of the coarsest feature grid; each level halves it.", unit="mm", low=0, above=True
    )
    grid_features: int = setting(4, "Features per node of each feature grid.", low=1)
    fourier_features: int = setting(64, "Fourier features (fourier encoding).", low=1)
    fourier_sigma: float = setting(4.0, "Standard deviation of the Fourier features' frequencies.", low=0, above=True)
    omega0: float = setting(30.0, "SIREN's frequency factor (sine activation).", low=0, above=True)

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class FitConfig(check.PairRun):
    """Everything that defines a fit (saved in ``PREFIXregode.json``); the start, masks, device,
    threads and seed are :class:`~regode.config.PairRun`'s."""

    diffeomorphic: bool = setting(
        False, "Fit a stationary velocity field and integrate it over [0, 1] (else a displacement)."
    )
    sampler: str = setting(
        "downsize", "Coordinates per step: a strided lattice, mini-patches, or both (two fields).", choices=SAMPLERS
    )
    metric: str = setting(
        "mi",
        "mi: any contrasts; content: learned content features (any contrasts); mind: MIND descriptors (any "
        "contrasts); ncc: local NCC, same contrast; mse; auto: ncc for one contrast, mi across (judged on the "
        "pair after the affine stage).",
        choices=METRICS,
    )
    encoder: str | None = setting(
        None,
        "--metric content: encoder from `regode train --model encoder` (default: the shipped encoder.pt).",
        path=True,
    )
    iterations: int = setting(60, "Adam steps of the (first) field.", low=1)
    coarse_iterations: int = setting(
        100,
        "Adam steps before --iterations on a 2x coarser lattice and smoothed images (downsize and hybrid samplers).",
        low=0,
    )
    refine_iterations: int = setting(20, "Adam steps of the second field (hybrid sampler, mini-patches).", low=1)
    lr: float = setting(4e-2, "Adam's learning rate.", low=0, above=True)
    spacing: float = setting(
        2.0, "Working grid spacing: both images are resampled to it.", unit="mm", low=0, above=True
    )
    stride: int = setting(3, "Downsize sampler: one point in STRIDE along each axis of the working grid.", low=1)
    patch_size: int = setting(16, "Mini-patch edge (points).", low=2)
    patches: int = setting(4, "Mini-patches per step.", low=1)
    margin: float = setting(
        10.0, "Samples are drawn in the fixed image's foreground box grown by this.", unit="mm", low=0
    )
    ncc_window: int = setting(5, "Local NCC window (lattice points).", low=1)
    lambda_fold: float = setting(10.0, "Weight of the folding penalty mean(relu(0.1 - det J)).", low=0)
    lambda_grad: float = setting(5.0, "Weight of the gradient energy mean ||J - I||^2.", low=0)
    lambda_bending: float = setting(0.0, "Weight of the bending energy (second differences, per mm^2).", low=0)
    solver: str = setting("euler", "Velocity integration (--diffeomorphic).", choices=SOLVERS)
    integration_steps: int = setting(6, "Fixed integration steps over [0, 1] (--diffeomorphic).", low=1)
    network: FieldConfig = group(FieldConfig)
    affine: bool = setting(
        False,
        "First fit an affine map (on the coarse lattice, then frozen), then the fields after it: for pairs "
        "not yet linearly aligned; written to PREFIX0GenericAffine.mat.",
    )
    affine_iterations: int = setting(100, "Adam steps of the affine map (--affine).", low=0)
    center_of_mass: bool = setting(
        False,
        "Start from the translation between the head centres (off: a deformable fit expects roughly aligned images).",
    )
    fine_spacing: float | None = setting(
        0.0,
        "Fit the last field on for --fine-iterations steps on images at this spacing (0: no "
        "fine level; auto: the fixed image's spacing, at least 1 mm). Skipped where not finer "
        "than --spacing.",
        unit="mm",
        low=0,
        none="auto",
    )
    fine_iterations: int = setting(30, "Adam steps of the fine level.", low=1)

    def __post_init__(self):
        super().__post_init__()
        check.require(
            self.fine_spacing == 0 or self.metric != "content",
            "--metric content works at the encoder's 2 mm: not with --fine-spacing",
        )


SPEC = Spec("fit-field", {"inputs": check.PairInputs, "config": FitConfig}, presets=PRESETS)
"""the settings of ``regode fit-field`` (and of a cohort's fit-field rows): the files, then the config; its presets."""
