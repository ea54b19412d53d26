"""The declaration of a setting (:func:`setting`, :class:`Option`) and what follows from it alone:
the value's type and range (:func:`convert`, :func:`validate`) and the config built from values
(:func:`build`, :func:`from_dict`). No torch and no typer here."""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RegodeError

REQUIRED = dataclasses.MISSING
"""the default of a setting that has none (``fixed``, ``moving``): the command line or a config
file must give it."""
SOURCES = ("default", "preset", "config file", "cohort options", "manifest row", "command line")
"""where a setting can come from, lowest first."""


@dataclasses.dataclass(frozen=True)
class Option:
    """How a config field is given: its help, flag, unit and valid range."""

    help: str
    flag: str | None = None
    """the long flag; None: the field's name (``lambda_fold`` -> ``--lambda-fold``); "": config files only."""
    short: str | None = None
    """a one-letter flag such as ``-f``."""
    unit: str | None = None
    """the unit of a number (``mm``, ``degrees``), shown in the help."""
    low: float | None = None
    """the least value of a number."""
    above: bool = False
    """the value must be greater than ``low``, not equal to it."""
    high: float | None = None
    """the greatest value of a number."""
    choices: tuple[str, ...] | None = None
    """the allowed values of a string."""
    none: str | None = None
    """the word that stands for None on the command line and in TOML files (``auto``)."""
    path: bool = False
    """a file or folder: a manifest's relative paths are taken from the manifest's folder."""
    separator: str | None = None
    """a tuple given as one value, split at this character (``--methods a,b``)."""
    file: bool = True
    """whether a config file may give it (an output prefix may not: a replay writes elsewhere)."""
    derived: bool = False
    """its default (None or "") is worked out from other settings when the config is built (the
    horizon from the levels): a printed config leaves it to be worked out again."""


def setting(default: Any = REQUIRED, help: str = "", *, factory: Callable | None = None, **option) -> Any:
    """A dataclass field declared as an option (see :class:`Option` for ``option``'s keys)."""
    metadata = {"option": Option(help, **option)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def group(cls: type, help: str = "", *, default: Any = None, cli: bool = True) -> Any:
    """A nested config (its own fields are declared), ``default`` (or ``cls()``) unless given;
    ``cli=False``: config files only."""
    factory = cls if default is None else (lambda: default)
    return dataclasses.field(
        default_factory=factory, metadata={"group": help, "cli": cli, "instance": default is not None}
    )


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One declared setting of a config class, at ``path`` (field names from the top)."""

    path: tuple[str, ...]
    field: dataclasses.Field
    option: Option
    type: Any
    cli: bool = True

    @property
    def name(self) -> str:
        """The dotted name: ``network.encoding``."""
        return ".".join(self.path)

    @property
    def flag(self) -> str | None:
        """The long flag, or None for a setting of config files only."""
        if not self.cli or self.option.flag == "":
            return None
        return self.option.flag or "--" + self.path[-1].replace("_", "-")

    @property
    def label(self) -> str:
        """How messages name it: its flag, else its dotted name."""
        return self.flag or self.name

    @property
    def required(self) -> bool:
        return self.field.default is REQUIRED and self.field.default_factory is REQUIRED

    @property
    def default(self) -> Any:
        if self.field.default_factory is not REQUIRED:
            return self.field.default_factory()
        return None if self.field.default is REQUIRED else self.field.default


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


@functools.cache
def leaves(cls: type, prefix: tuple[str, ...] = (), cli: bool = True) -> tuple[Leaf, ...]:
    """Every declared setting of ``cls``, nested configs' included (depth first); computed once per
    class (every config's ``__post_init__`` reads them)."""
    hints, out = _hints(cls), []
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            out += leaves(hints[f.name], prefix + (f.name,), cli and f.metadata["cli"])
        elif "option" in f.metadata:
            out.append(Leaf(prefix + (f.name,), f, f.metadata["option"], hints[f.name], cli))
    return tuple(out)


def _optional(kind) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(kind)
    if (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return kind, False


def _item(kind):
    """The item type of ``tuple[X, ...]``, or None for other types."""
    if typing.get_origin(kind) is tuple:
        return next(a for a in typing.get_args(kind) if a is not Ellipsis)
    return None


def convert(leaf: Leaf, value: Any, where: str = "") -> Any:
    """``value`` (from the command line or a file) as the field's type, or one clear error."""
    kind, nullable = _optional(leaf.type)
    if value is None or (leaf.option.none is not None and value == leaf.option.none):
        if nullable:
            return None
        raise RegodeError(f"{leaf.label} needs a value{where}")
    item = _item(kind)
    try:
        if item is not None:
            if isinstance(value, str):
                parts = value.split(leaf.option.separator) if leaf.option.separator else [value]
                value = [p.strip() for p in parts if p.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if dataclasses.is_dataclass(item):
                try:
                    return tuple(v if isinstance(v, item) else from_dict(item, v) for v in value)
                except TypeError as exc:  # a table missing a key, or with a wrong one
                    raise RegodeError(f"each item is a table of {item.__name__}'s settings ({exc})") from None
            return tuple(_scalar(item, v) for v in value)
        return _scalar(kind, value)
    except RegodeError as exc:
        raise RegodeError(f"{leaf.label}: {exc}{where}") from None
    except (TypeError, ValueError, OverflowError):
        raise RegodeError(f"{leaf.label} must be {_describe(kind)}, not {value!r}{where}") from None


def _scalar(kind, value):
    if isinstance(value, enum.Enum):
        value = value.value
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is int:
        if isinstance(value, str):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise TypeError
        return int(value)
    if kind is float:
        if isinstance(value, str):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if kind is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    return value


def _describe(kind) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(kind, "a list")


def validate(config) -> None:
    """Check each declared field of ``config`` (not its nested configs, which check themselves)
    against its declaration: type, range, choices. A bad value raises :class:`RegodeError`
    naming the option (``--lr must be a positive number, not -1``)."""
    for leaf in leaves(type(config)):
        if len(leaf.path) > 1:
            continue
        value = getattr(config, leaf.path[0])
        kind, nullable = _optional(leaf.type)
        if value is None:
            if not nullable:
                raise RegodeError(f"{leaf.label} needs a value")
            continue
        item = _item(kind)
        for v in value if item is not None and isinstance(value, (tuple, list)) else [value]:
            _check(leaf, v, item or kind)


def _check(leaf: Leaf, value, kind) -> None:
    option = leaf.option
    if option.choices is not None and value not in option.choices:
        raise RegodeError(f"unknown {leaf.label} {value!r}: choose from {', '.join(option.choices)}")
    if kind in (int, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            number = False
        what = "a whole number" if kind is int else "a number"
        if option.low is not None and option.above:
            ok, bound = (
                number and value > option.low,
                "a positive number" if option.low == 0 else f"{what} above {option.low:g}",
            )
        elif option.low is not None:
            ok, bound = number and value >= option.low, f"at least {option.low:g}"
        else:
            ok, bound = number, what
        if option.high is not None:
            ok, bound = ok and value <= option.high, f"{bound} and at most {option.high:g}"
        if not ok:
            raise RegodeError(f"{leaf.label} must be {bound}, not {value}")
    elif kind is bool and not isinstance(value, bool):
        raise RegodeError(f"{leaf.label} must be true or false, not {value!r}")
    elif kind is str and not isinstance(value, str):
        raise RegodeError(f"{leaf.label} must be text, not {value!r}")


def from_dict(cls, values: dict):
    """The config ``cls`` from a dict written by ``dataclasses.asdict`` (nested configs rebuilt,
    lists back to tuples); unknown keys are an error."""
    if not isinstance(values, dict):
        raise RegodeError(f"{cls.__name__} needs a table of settings, not {values!r}")
    values = dict(values)
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise RegodeError(f"unknown setting(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kind, _ = _optional(hints[f.name])
        item = _item(kind)
        if dataclasses.is_dataclass(kind) and isinstance(values[f.name], dict):
            values[f.name] = from_dict(kind, values[f.name])
        elif item is not None and isinstance(values[f.name], (list, tuple)):
            values[f.name] = tuple(
                from_dict(item, v) if dataclasses.is_dataclass(item) and isinstance(v, dict) else v
                for v in values[f.name]
            )
    return cls(**values)


def build(cls, values: dict[tuple[str, ...], Any], base: Any = None):
    """The config ``cls`` with the settings ``values`` (by path), the rest as in ``base`` (or at
    their defaults, a nested config's default being its group's)."""
    own = {path[0]: v for path, v in values.items() if len(path) == 1}
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            inner = {path[1:]: v for path, v in values.items() if len(path) > 1 and path[0] == f.name}
            # from a given config, or a group's own default instance; else from the class's defaults
            # (not from a built default, whose __post_init__ may have filled in fields from others)
            start = (
                getattr(base, f.name) if base is not None else f.default_factory() if f.metadata["instance"] else None
            )
            if inner or base is None:
                own[f.name] = build(_hints(cls)[f.name], inner, start)
    if base is not None:
        return dataclasses.replace(base, **own)
    missing = [leaf.label for leaf in leaves(cls) if len(leaf.path) == 1 and leaf.required and leaf.path[0] not in own]
    if missing:
        raise RegodeError(f"missing {', '.join(missing)} (give it on the command line or in a --config file)")
    return cls(**own)
