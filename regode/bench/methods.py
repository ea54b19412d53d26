"""Registration methods behind one interface, so new ones plug in.

A method registers ``moving`` to ``fixed`` (both :class:`~regode.io.Image`) and returns the
fixed -> moving mapping as a regode :class:`~regode.transforms.Transform`, or that mapping and
its inverse (moving -> fixed) where the method writes one (ANTs' ``1InverseWarp``, greedy's
``-oinv``, regode's); the benchmark inverts the others numerically. ``METHODS`` maps the
name used with ``--methods`` to a factory; a method whose dependency is missing says why in
``unavailable`` and its rows are skipped, never failing the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .. import api
from ..alignment import starting_point
from ..api import FieldConfig, FitConfig, Image, RegisterConfig, RegodeError, Transform
from ..io import read_image, write_image
from ..nir.config import PRESETS
from ..odenet.config import MODELS
from ..odenet.model import MSODENet
from ..preprocess import working_image
from ..transforms import Affine, Compose, DisplacementField


class Method(Protocol):
    unavailable: str | None

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform | tuple[Transform, Transform]: ...


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

    def register(self, fixed: Image, moving: Image, seed: int) -> tuple[Transform, Transform]:
        import ants

        f, m = to_ants(fixed), to_ants(moving)
        with tempfile.TemporaryDirectory(prefix="regode-ants-") as tmp:
            result = ants.registration(
                f, m, type_of_transform=self.kind, random_seed=seed, outprefix=str(Path(tmp) / "out_")
            )
            # antsApplyTransforms' order for the inverse: -t [0GenericAffine.mat,1] -t 1InverseWarp.nii.gz
            affine, *warps = result["invtransforms"]
            return api.load_transforms(result["fwdtransforms"]), api.load_transforms([f"[{affine},1]", *warps])


class Greedy:
    """greedy, ITK-SNAP's fast registration tool (PyPI ``picsl_greedy``): affine (12 dof, NCC 2x2x2,
    from the image centres), then deformable (NCC 2x2x2), 100x50x10 iterations. Its matrix file is
    in RAS, turned into LPS here (``D M D``, ``D = diag(-1, -1, 1, 1)``); its warp's vectors are LPS
    as SimpleITK reads them. Verified against greedy's own reslicing (tests/test_bench.py)."""

    RECIPE = "-m NCC 2x2x2 -n 100x50x10"

    def __init__(self):
        try:
            import picsl_greedy  # noqa: F401

            self.unavailable = None
        except ImportError:
            self.unavailable = "picsl_greedy is not installed (pip install 'regode[bench]')"

    def register(self, fixed: Image, moving: Image, seed: int) -> tuple[Transform, Transform]:
        transform, inverse, _ = self.run(fixed, moving)
        return transform, inverse

    def run(
        self, fixed: Image, moving: Image, reslice: bool = False
    ) -> tuple[Transform, Transform, torch.Tensor | None]:
        """The fixed -> moving mapping greedy found, its inverse (greedy's ``-oinv`` warp, then the
        affine's inverse), and (``reslice``) greedy's own resampling of the moving image through
        it, for checking the conversion."""
        from picsl_greedy import Greedy3D  # optional (regode[bench])

        with tempfile.TemporaryDirectory(prefix="regode-greedy-") as tmp:
            f, m, a, w, r = (
                str(Path(tmp) / n)
                for n in ("fixed.nii.gz", "moving.nii.gz", "affine.mat", "warp.nii.gz", "resliced.nii.gz")
            )
            inv = str(Path(tmp) / "inverse_warp.nii.gz")
            write_image(fixed.data, fixed.grid, f, np.float32)
            write_image(moving.data, moving.grid, m, np.float32)
            greedy, log = Greedy3D(), io.StringIO()
            with _quiet_stdout():  # greedy's optimiser prints to the C-level stdout
                greedy.execute(f"-d 3 -a -dof 12 -i {f} {m} -o {a} -ia-image-centers {self.RECIPE}", out=log, err=log)
                greedy.execute(f"-d 3 -i {f} {m} -it {a} -o {w} -oinv {inv} {self.RECIPE}", out=log, err=log)
                if reslice:
                    greedy.execute(f"-d 3 -rf {f} -rm {m} {r} -r {w} {a}", out=log, err=log)
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            matrix = flip @ np.loadtxt(a) @ flip  # RAS -> LPS
            warp, inverse_warp = read_image(w, components=3), read_image(inv, components=3)
            affine = Affine(torch.as_tensor(matrix[:3, :3])[None], torch.as_tensor(matrix[:3, 3])[None])
            transform = Compose([affine, DisplacementField(warp.grid, warp.data.double())])
            inverse = Compose([DisplacementField(inverse_warp.grid, inverse_warp.data.double()), affine.inverse()])
            return transform, inverse, read_image(r).data if reslice else None


class Elastix:
    """elastix (PyPI ``itk-elastix``) as a user runs it: its default "affine" then "bspline"
    parameter maps (mutual information, four resolutions each), on as many threads as PyTorch has.
    The mapping is transformix's deformation field on the fixed grid (``T(x) - x``, world mm);
    elastix writes no inverse (the benchmark inverts the field numerically). ``iterations``: each
    resolution's iterations instead of the maps' default (250), for quick checks."""

    def __init__(self, iterations: int | None = None):
        self.iterations = iterations
        try:
            import itk

            self.unavailable = None if hasattr(itk, "elastix_registration_method") else "itk has no elastix"
        except ImportError:
            self.unavailable = "itk-elastix is not installed (pip install 'regode[bench]')"

    def register(self, fixed: Image, moving: Image, seed: int) -> Transform:
        import itk  # optional (regode[bench])

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(torch.get_num_threads())
        with tempfile.TemporaryDirectory(prefix="regode-elastix-") as tmp:
            f, m, d = (str(Path(tmp) / n) for n in ("fixed.nii.gz", "moving.nii.gz", "field.nii.gz"))
            write_image(fixed.data, fixed.grid, f, np.float32)
            write_image(moving.data, moving.grid, m, np.float32)
            fixed_itk, moving_itk = itk.imread(f, itk.F), itk.imread(m, itk.F)
            parameters = itk.ParameterObject.New()
            for name in ("affine", "bspline"):
                parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
            if self.iterations is not None:
                parameters.SetParameter("MaximumNumberOfIterations", str(self.iterations))
            _, found = itk.elastix_registration_method(
                fixed_itk, moving_itk, parameter_object=parameters, log_to_console=False
            )
            # transformix writes its own deformationField.nii into its output folder: the private one
            itk.imwrite(itk.transformix_deformation_field(moving_itk, found, output_directory=tmp), d)
            field = read_image(d, components=3)
            return DisplacementField(field.grid, field.data.double())


@contextlib.contextmanager
def _quiet_stdout():
    """File descriptor 1 to /dev/null for the block (a C library's prints), then back."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            ctypes.CDLL(None).fflush(None)  # what the C library still buffers goes to /dev/null too
            os.dup2(saved, 1)
            os.close(saved)


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
                    level.without_force()
                self.models[kind] = (blank, path)

    def register(self, fixed: Image, moving: Image, seed: int) -> tuple[Transform, Transform]:
        result = api.register(fixed, moving, replace(self.config, seed=seed), self.models)
        return result.transform, result.inverse_transform(self.config.inverse_iterations)


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

    def register(self, fixed: Image, moving: Image, seed: int) -> tuple[Transform, Transform]:
        result = api.fit_field(fixed, moving, replace(self.config, seed=seed))
        return result.transform, result.inverse_transform(self.config.inverse_iterations)


METHODS: dict[str, Callable[[], Method]] = {
    "identity": Identity,
    "ants:Rigid": lambda: Ants("Rigid"),
    "ants:SyN": lambda: Ants("SyN"),
    "ants:SyNRA": lambda: Ants("SyNRA"),
    # what labs run between subjects: antsRegistrationSyNQuick.sh and antsRegistrationSyN.sh (rigid,
    # affine, then SyN; [s]: one stage per rigid/affine/SyN, CC at full resolution for SyN)
    "ants:SyNQuick": lambda: Ants("antsRegistrationSyNQuick[s]"),
    "ants:SyNFull": lambda: Ants("antsRegistrationSyN[s]"),
    "greedy": Greedy,
    "elastix": Elastix,
    **{f"regode:{m}": (lambda m=m: Regode(m)) for m in MODELS},
    # the networks alone, without the mutual-information polish after each (regode.odenet.polish)
    **{f"regode:{m}-net": (lambda m=m: Regode(m, polish=False)) for m in MODELS},
    # the start and the polish without the networks (their velocities zeroed)
    **{f"regode:{m}-polish-only": (lambda m=m: Regode(m, networks=False)) for m in MODELS},
    "regode:principal-axes": PrincipalAxes,
    "regode:nir": NeuralField,
    "regode:nir-ncc": lambda: NeuralField(metric="ncc"),
    # the learned content similarity (shipped weights/encoder.pt) and MIND, against MI
    # (docs/concepts/content-similarity.md)
    "regode:nir-content": lambda: NeuralField(metric="content"),
    "regode:nir-mind": lambda: NeuralField(metric="mind"),
    "regode:nir-diffeo": lambda: NeuralField(diffeomorphic=True),
    # inter-subject pairs: an affine stage first, then a more flexible field (docs/concepts/fit-field.md)
    "regode:nir-affine": lambda: NeuralField(affine=True, center_of_mass=True, lambda_grad=1.0, lambda_fold=100.0),
    # fit-field --preset inter-subject: the above with the metric chosen per pair and a fine level at the
    # image's spacing
    "regode:nir-inter-subject": lambda: NeuralField(**PRESETS["inter-subject"]),
    "regode:nir-affine-mind": lambda: NeuralField(
        affine=True, center_of_mass=True, lambda_grad=1.0, lambda_fold=100.0, metric="mind"
    ),
    "regode:nir-fourier": lambda: NeuralField(network=FieldConfig(encoding="fourier"), lr=1e-2),
    "regode:nir-siren": lambda: NeuralField(network=FieldConfig(encoding="none", activation="sine"), lr=1e-3),
}
