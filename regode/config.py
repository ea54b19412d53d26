"""Run configurations: frozen dataclasses, validated one way.

Every run (register, fit-field, train, bench) is described by a frozen dataclass whose
``__post_init__`` checks each field with the helpers below; a bad value raises
:class:`~regode.errors.RegodeError` naming the command-line option (``--lr``), so the library and
the command line refuse it with the same line. The resolved config is saved beside every output
(``dataclasses.asdict``) and rebuilt from it with :func:`from_dict`.

This module and the config modules of the method packages import no torch: the command line
reads its choices and defaults from them, and ``regode --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from .errors import RegodeError

DEVICES = ("auto", "cpu", "cuda")
"""``--device``: auto takes a CUDA GPU when torch sees one (regode.device)."""
GENERATORS = ("heads", "brain")
"""synthetic training data: random heads (regode.synthetic) or brain-like subjects (regode.anatomy)."""
INTERPOLATIONS = ("linear", "nearest", "label", "bspline")
"""``regode warp --interp`` (regode.warp.INTERPOLATORS): label is ANTs' GenericLabel."""


def option(name: str) -> str:
    """The command-line spelling of a config field: ``lambda_fold`` -> ``--lambda-fold``."""
    return "--" + name.replace("_", "-")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise RegodeError(message)


def positive(config, *names: str) -> None:
    """Each field is a finite number above zero."""
    for name in names:
        value = getattr(config, name)
        require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"{option(name)} must be a positive number, not {value}")


def at_least(config, low: float, *names: str) -> None:
    """Each field is a finite number of at least ``low``."""
    for name in names:
        value = getattr(config, name)
        require(isinstance(value, (int, float)) and math.isfinite(value) and value >= low,
                f"{option(name)} must be at least {low:g}, not {value}")


def one_of(config, name: str, allowed) -> None:
    value = getattr(config, name)
    require(value in allowed, f"unknown {option(name)} {value!r}: choose from {', '.join(allowed)}")


def threads(config) -> None:
    """``threads``: None or 0 (all cores) or a positive count."""
    require(config.threads is None or (isinstance(config.threads, int) and config.threads >= 0),
            f"--threads must be a number of threads (0: all cores), not {config.threads}")


@dataclasses.dataclass(frozen=True)
class PairRun:
    """What every registration of one pair has, whatever the method (``register``, ``fit-field``):
    the start, the masks, the device and threads, the seed, the inverse's iterations."""

    initial_transform: tuple[str, ...] = ()
    """linear transform specs (antsApplyTransforms order) of the starting fixed -> moving mapping,
    e.g. ``register``'s 0GenericAffine.mat."""
    fixed_mask: str | None = None
    """an image (any grid; non-zero = inside): only fixed points inside count in the similarity
    (ANTs' ``-x``): lesions, partial fields of view, skull left out."""
    moving_mask: str | None = None
    """the same for the moving image: only points that map inside it count."""
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    inverse_iterations: int = 30

    def __post_init__(self):
        one_of(self, "device", DEVICES)
        threads(self)
        at_least(self, 1, "inverse_iterations")
        object.__setattr__(self, "initial_transform", tuple(str(p) for p in self.initial_transform))


def from_dict(cls, values: dict):
    """The config ``cls`` from a dict written by ``dataclasses.asdict`` (nested configs rebuilt,
    lists back to tuples where the field is a tuple); unknown keys are an error."""
    values = dict(values)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    require(not unknown, f"unknown setting(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(values[f.name], dict):
            values[f.name] = from_dict(kind, values[f.name])
        elif typing.get_origin(kind) is tuple and isinstance(values[f.name], (list, tuple)):
            (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
            values[f.name] = tuple(from_dict(item, v) if dataclasses.is_dataclass(item) and isinstance(v, dict) else v
                                   for v in values[f.name])
    return cls(**values)
