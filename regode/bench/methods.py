"""Registration methods behind one interface, so new ones plug in.

A method registers ``moving`` to ``fixed`` (both :class:`~regode.io.Image`) and returns the
fixed -> moving mapping as a regode :class:`~regode.transforms.Transform`. ``METHODS`` maps the
name used with ``--methods`` to a factory; a method whose dependency is missing says why in
``unavailable`` and its rows are skipped, never failing the run.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from .. import api
from ..alignment import starting_point
from ..api import FieldConfig, FitConfig, Image, RegisterConfig, RegodeError, Transform
from ..odenet.config import MODELS
from ..odenet.model import MSODENet
from ..preprocess import working_image
from ..transforms import Compose


class Method(Protocol):
    unavailable: str | None

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform: ...


class Identity:
    """No registration: the floor every method must beat."""

    unavailable = None

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform:
        return Compose([])


def to_ants(image: Image):
    """An in-memory ANTs image with the same grid (ANTs arrays are indexed (i, j, k))."""
    import ants  # optional (regode[bench])

    g = image.grid
    array = image.data[0, 0].numpy().transpose(2, 1, 0).astype(np.float32)
    return ants.from_numpy(array, origin=g.origin, spacing=g.spacing, direction=g.direction_matrix)


class Ants:
    """ANTs through antspyx (``pip install regode[bench]``) with antspyx's defaults (Mattes MI for
    the linear stages) and a fixed random seed; its transform files are read back by regode."""

    def __init__(self, kind: str):
        self.kind = kind
        try:
            import ants  # noqa: F401

            self.unavailable = None
        except ImportError:
            self.unavailable = "antspyx is not installed (pip install 'regode[bench]')"

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform:
        import ants

        f, m = to_ants(fixed), to_ants(moving)
        with tempfile.TemporaryDirectory(prefix="regode-ants-") as tmp:
            result = ants.registration(f, m, type_of_transform=self.kind, random_seed=seed, outprefix=str(Path(tmp) / "out_"))
            return api.load_transforms(result["fwdtransforms"])


class Regode:
    """MS-ODENet (``regode register``'s engine) with the shipped weights (or ``$REGODE_WEIGHTS``),
    on the benchmark's working grid. ``networks=False`` zeroes every network's output (the start
    and the polish alone: the ablation of the networks); ``overrides``: RegisterConfig fields."""

    def __init__(self, model: str, networks: bool = True, **overrides):
        self.config = RegisterConfig(model=model, **overrides)
        try:
            self.models = api.load_models(self.config)
            self.unavailable = None
        except RegodeError as exc:
            self.unavailable = str(exc)
            return
        if not networks:  # untrained networks (zero last layers) with zero force steps: zero velocity
            for kind, (net, path) in self.models.items():
                blank = MSODENet(net.config)
                for level in blank.nets:
                    level.step.data.zero_()
                self.models[kind] = (blank, path)

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform:
        return api.register(fixed, moving, replace(self.config, seed=seed), self.models).transform


class PrincipalAxes:
    """The start of ``regode register``'s rigid models alone (regode.alignment), at 2 mm: what
    the rigid network has to improve on."""

    unavailable = None

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform:
        f, f_grid = working_image(fixed, 2.0, torch.device("cpu"))
        m, m_grid = working_image(moving, 2.0, torch.device("cpu"))
        return starting_point(f, f_grid, m, m_grid, (), center_of_mass=True, axes=True)[0]


class NeuralField:
    """NIR (``regode fit-field``'s engine) with its defaults plus ``overrides`` (FitConfig fields)."""

    unavailable = None

    def __init__(self, **overrides):
        self.config = FitConfig(**overrides)

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform:
        return api.fit_field(fixed, moving, replace(self.config, seed=seed)).transform


METHODS: dict[str, Callable[[], Method]] = {
    "identity": Identity,
    "ants:Rigid": lambda: Ants("Rigid"),
    "ants:SyN": lambda: Ants("SyN"),
    "ants:SyNRA": lambda: Ants("SyNRA"),
    # what labs run between subjects: antsRegistrationSyNQuick.sh and antsRegistrationSyN.sh (rigid,
    # affine, then SyN; [s]: one stage per rigid/affine/SyN, CC at full resolution for SyN)
    "ants:SyNQuick": lambda: Ants("antsRegistrationSyNQuick[s]"),
    "ants:SyNFull": lambda: Ants("antsRegistrationSyN[s]"),
    **{f"regode:{m}": (lambda m=m: Regode(m)) for m in MODELS},
    # the networks alone, without the mutual-information polish after each (regode.odenet.polish)
    **{f"regode:{m}-net": (lambda m=m: Regode(m, polish=False)) for m in MODELS},
    # the start and the polish without the networks (their velocities zeroed)
    **{f"regode:{m}-polish-only": (lambda m=m: Regode(m, networks=False)) for m in MODELS},
    "regode:principal-axes": PrincipalAxes,
    "regode:nir": NeuralField,
    "regode:nir-ncc": lambda: NeuralField(metric="ncc"),
    # the learned content similarity (shipped weights/encoder.pt) and MIND, against MI (docs/encoder.md)
    "regode:nir-content": lambda: NeuralField(metric="content"),
    "regode:nir-mind": lambda: NeuralField(metric="mind"),
    "regode:nir-diffeo": lambda: NeuralField(diffeomorphic=True),
    # inter-subject pairs: an affine stage first, then a more flexible field (docs/nir.md)
    "regode:nir-affine": lambda: NeuralField(affine=True, center_of_mass=True, lambda_grad=1.0, lambda_fold=100.0),
    "regode:nir-affine-mind": lambda: NeuralField(affine=True, center_of_mass=True, lambda_grad=1.0, lambda_fold=100.0, metric="mind"),
    "regode:nir-fourier": lambda: NeuralField(network=FieldConfig(encoding="fourier"), lr=1e-2),
    "regode:nir-siren": lambda: NeuralField(network=FieldConfig(encoding="none", activation="sine"), lr=1e-3),
}
