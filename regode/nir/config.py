"""Configurations of ``regode fit-field`` (NIR): the neural field and the fit. No torch here (see
regode.config): the command line reads its choices and defaults from these classes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import config as check

ENCODINGS = ("grid", "fourier", "none")
ACTIVATIONS = ("relu", "sine")
SAMPLERS = ("downsize", "patch", "hybrid")
METRICS = ("mi", "ncc", "mse", "content", "mind", "auto")
FEATURE_METRICS = ("content", "mind")
"""metrics compared as feature volumes computed once per image."""
SOLVERS = ("euler", "midpoint", "rk4")
PRESETS = {
    "inter-subject": {"affine": True, "center_of_mass": True, "lambda_grad": 1.0, "lambda_fold": 100.0, "metric": "auto", "fine_spacing": None},
}
"""``fit-field --preset``: settings for a kind of pair, applied where the command line leaves the
default. inter-subject (two subjects, or a subject and a template): an affine stage from the head
centres, then a more flexible field; measured on NiChart pairs at 2 mm (docs/nir.md). The fine
level at the image's spacing: with local NCC (what auto picks for one contrast) it raised Dice on
the aseg 1 mm known-motion pair from 88.2 to 91.2 (docs/benchmarks.md, "Inter-subject")."""


@dataclass(frozen=True)
class FieldConfig:
    """The neural field's architecture (regode.nir.fields)."""

    encoding: str = "grid"
    """grid: multi-resolution feature grids (fast); fourier: Fourier features; none: raw coordinates."""
    activation: str = "relu"
    """MLP activation (sine: SIREN initialisation)."""
    hidden: int = 32
    layers: int = 2
    """hidden layers of the MLP."""
    grid_levels: int = 4
    grid_coarsest: float = 32.0
    """node spacing (mm) of the coarsest feature grid; each level halves it."""
    grid_features: int = 4
    fourier_features: int = 64
    fourier_sigma: float = 4.0
    omega0: float = 30.0

    def __post_init__(self):
        check.one_of(self, "encoding", ENCODINGS)
        check.one_of(self, "activation", ACTIVATIONS)
        check.at_least(self, 1, "hidden", "layers", "grid_levels", "grid_features", "fourier_features")
        check.positive(self, "grid_coarsest", "fourier_sigma", "omega0")


@dataclass(frozen=True)
class FitConfig(check.PairRun):
    """Everything that defines a fit (saved in ``PREFIXregode.json``); the start, masks, device,
    threads and seed are :class:`~regode.config.PairRun`'s."""

    diffeomorphic: bool = False
    """the field is a stationary velocity integrated over [0, 1] (else a displacement)."""
    sampler: str = "downsize"
    """coordinates per step: a strided lattice, mini-patches, or both (two fields)."""
    metric: str = "mi"
    """mi: mutual information (any contrasts); content: the learned content features (any
    contrasts); mind: MIND descriptors (any contrasts); ncc: local NCC (same contrast); mse; auto:
    local NCC for one contrast, MI across, judged on the pair after the start and the affine stage
    (regode.contrast; the affine stage itself uses MI)."""
    encoder: str | None = None
    """content metric: the encoder checkpoint (None: the shipped ``weights/encoder.pt``)."""
    iterations: int = 60
    """Adam steps of the (first) field."""
    coarse_iterations: int = 100
    """Adam steps of the first field before ``iterations``, on a lattice twice as coarse and on
    smoothed images (downsize and hybrid samplers): coarse-to-fine, cheaply."""
    refine_iterations: int = 20
    """Adam steps of the hybrid sampler's second field (mini-patches)."""
    lr: float = 4e-2
    """Adam's learning rate."""
    spacing: float = 2.0
    """working grid spacing (mm): both images are resampled to it, the result is evaluated on it."""
    stride: int = 3
    """downsize sampler: one point in ``stride`` along each axis of the working grid."""
    patch_size: int = 16
    """mini-patch edge (points)."""
    patches: int = 4
    """mini-patches per step."""
    margin: float = 10.0
    """samples are drawn in the fixed image's foreground box grown by this (mm)."""
    ncc_window: int = 5
    """local NCC window, in lattice points."""
    lambda_fold: float = 10.0
    """weight of the folding penalty mean(relu(0.1 - det J))."""
    lambda_grad: float = 5.0
    """weight of the gradient energy mean ||J - I||^2."""
    lambda_bending: float = 0.0
    """weight of the bending energy (second differences, per mm^2)."""
    solver: str = "euler"
    """velocity integration (diffeomorphic)."""
    integration_steps: int = 6
    """fixed integration steps over [0, 1] (diffeomorphic)."""
    network: FieldConfig = field(default_factory=FieldConfig)
    affine: bool = False
    """first fit an affine map (12 parameters, on the coarse lattice), then the fields after it:
    for pairs not linearly aligned yet (e.g. two subjects); it goes into PREFIX0GenericAffine.mat."""
    affine_iterations: int = 100
    center_of_mass: bool = False
    """start from the translation between the head centres (regode.preprocess.head_center); off:
    a deformable fit expects roughly aligned images."""
    fine_spacing: float | None = 0.0
    """a fine level: the last field fitted on for ``fine_iterations`` more steps on images at this
    spacing (mm). 0: none; None: the fixed image's spacing (at least 1 mm). Skipped where not
    finer than ``spacing``."""
    fine_iterations: int = 30

    def __post_init__(self):
        check.one_of(self, "sampler", SAMPLERS)
        check.one_of(self, "metric", METRICS)
        check.one_of(self, "solver", SOLVERS)
        super().__post_init__()
        check.positive(self, "spacing", "lr")
        check.at_least(self, 0, "coarse_iterations", "affine_iterations", "margin", "lambda_fold", "lambda_grad", "lambda_bending")
        check.at_least(self, 1, "iterations", "refine_iterations", "stride", "patches", "integration_steps", "ncc_window", "fine_iterations")
        check.require(self.fine_spacing is None or self.fine_spacing >= 0, f"--fine-spacing must be 0 or more mm, not {self.fine_spacing}")
        check.require(self.fine_spacing == 0 or self.metric != "content",
                      "--metric content works at the encoder's 2 mm: not with --fine-spacing")
        check.at_least(self, 2, "patch_size")
