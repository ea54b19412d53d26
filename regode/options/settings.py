"""A command's settings (:class:`Spec`): resolved from layers of sources (:func:`resolve`), read
from config files (:func:`read_file`) and written as TOML (:func:`to_toml`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import RegodeError
from .schema import Leaf, build, convert, leaves


@dataclasses.dataclass(frozen=True)
class Spec:
    """A command's settings: named sections of config classes, whose top-level names are one
    namespace (``fixed`` of the inputs and ``model`` of the config are keys of one file), and its
    presets (``{name: {dotted setting: value}}``)."""

    command: str
    sections: dict[str, type]
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def leaves(self) -> dict[str, tuple[str, Leaf]]:
        """``{dotted name: (section, leaf)}`` (computed once; not to be changed)."""
        return self._leaves

    @functools.cached_property
    def _leaves(self) -> dict[str, tuple[str, Leaf]]:
        out: dict[str, tuple[str, Leaf]] = {}
        for section, cls in self.sections.items():
            for leaf in leaves(cls):
                if leaf.name in out:
                    raise TypeError(f"{self.command}: setting {leaf.name} is declared twice")
                out[leaf.name] = (section, leaf)
        return out

    @functools.cached_property
    def groups(self) -> frozenset[str]:
        """The dotted names of the nested configs (``network``, ``polish_schedule.rigid``)."""
        return frozenset(".".join(name.split(".")[:i]) for name in self._leaves for i in range(1, name.count(".") + 1))

    def tops(self) -> dict[str, str]:
        """``{top-level name: section}``."""
        return {f.name: section for section, cls in self.sections.items() for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A command's settings once resolved: each section's config and where each setting came from."""

    sections: dict[str, Any]
    sources: dict[str, str]
    preset: str | None = None
    given: dict[str, Any] = dataclasses.field(default_factory=dict)
    """the values the layers gave (``{dotted name: value}``), before the configs were built."""

    def __getitem__(self, section: str):
        return self.sections[section]


def resolve(spec: Spec, layers: list[tuple[str, dict[str, Any]]], preset: str | None = None) -> Resolved:
    """The sections of ``spec`` from ``layers`` (``(source, {dotted name: value})``, lowest first),
    above the ``preset``'s settings and the defaults."""
    known = spec.leaves()
    if preset is not None and preset not in spec.presets:
        raise RegodeError(f"unknown --preset {preset!r}: choose from {', '.join(spec.presets) or 'none'}")
    chosen: dict[str, Any] = {}
    sources = {name: "default" for name in known}
    for source, values in [("preset", spec.presets.get(preset, {}) if preset else {}), *layers]:
        for name, value in values.items():
            chosen[name] = value
            sources[name] = source
    sections = {}
    for section, cls in spec.sections.items():
        values = {known[name][1].path: v for name, v in chosen.items() if known[name][0] == section}
        sections[section] = build(cls, values)
    return Resolved(sections, sources, preset, chosen)


def load_document(path) -> dict:
    """The table a config file holds (TOML, or JSON for a run's record), or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RegodeError(f"--config {path}: file not found")
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
        else:
            document = _toml().loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RegodeError(f"--config {path}: cannot read it ({exc})") from None
    if not isinstance(document, dict):
        raise RegodeError(f"--config {path}: not a table of settings")
    return document


def read_file(path, spec: Spec) -> dict[str, Any]:
    """The settings a config file gives (``{dotted name: value}``): a TOML file of the command's
    settings (nested configs as tables; an unknown key is an error), or the ``PREFIXregode.json``
    (or benchmark JSON) a run wrote, whose records that are not settings (timings, hashes) are
    ignored; a file written by another regode version gives a warning."""
    from .._version import __version__

    path = Path(path)
    where = f" (in --config {path})"
    document = load_document(path)
    record = path.suffix.lower() == ".json" and isinstance(document.get("config"), dict)
    if record:
        written = document.get("regode")
        if document.get("command") != spec.command:
            what = f"regode {document['command']}" if "command" in document else "no regode command"
            raise RegodeError(f"--config {path} is the record of {what}, not of regode {spec.command}")
        if written is not None and written != __version__:
            print(
                f"regode: warning: --config {path} was written by regode {written}; this is regode {__version__}",
                file=sys.stderr,
            )
        inputs = document.get("inputs")
        if not isinstance(inputs, dict):  # records of earlier versions: the input files at the top
            inputs = {
                k: document[k] for k in ("fixed", "moving", "moving_labels") if k in document and k in spec.tops()
            }
        document = {**inputs, **document["config"]}
    values: dict[str, Any] = {}
    _flatten(document, spec, (), values, where, strict=not record)
    return values


def _flatten(table: dict, spec: Spec, prefix: tuple[str, ...], into: dict, where: str, strict: bool) -> None:
    known, groups = spec.leaves(), spec.groups
    for key, value in table.items():
        name = ".".join(prefix + (key,))
        if name in known:
            leaf = known[name][1]
            if not leaf.option.file:
                if strict:
                    raise RegodeError(f"{leaf.label} is given on the command line, not in a config file{where}")
                continue
            into[name] = convert(leaf, value, where)
        elif name in groups and isinstance(value, dict):
            _flatten(value, spec, prefix + (key,), into, where, strict)
        elif name in groups:
            raise RegodeError(f"{name} is a table of settings ([{name}] in TOML), not {value!r}{where}")
        elif strict:
            raise RegodeError(f"unknown setting {name!r}{where}")
        else:
            print(f"regode: warning: ignored {name!r}{where}: not a setting of this regode version", file=sys.stderr)


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def to_toml(spec: Spec, resolved: Resolved) -> str:
    """The resolved settings as a TOML file that ``--config`` reads back. A setting left at a
    default that the config works out from others (``Option.derived``: the horizon, the kind's
    schedule and L_reg) is written as that default, so that the file still works it out (with another
    ``--model`` or ``--levels``); unset optional values whose None has no spelling are left out."""
    import tomli_w

    table: dict[str, Any] = {}
    for name, (section, leaf) in spec.leaves().items():
        if not leaf.option.file:
            continue
        value: Any = resolved.sections[section]
        for part in leaf.path:
            value = getattr(value, part)
        if leaf.option.derived and resolved.given.get(name, leaf.default) in (None, ""):
            value = leaf.default  # worked out when the config is built: left to be worked out again
        if value is None:
            if leaf.option.none is not None:
                value = leaf.option.none
            elif leaf.default is None:
                continue
            else:
                raise RegodeError(f"{leaf.label}: None has no TOML spelling")
        if isinstance(value, tuple):
            value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
        node = table
        for part in name.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[name.rsplit(".", 1)[-1]] = value
    return tomli_w.dumps(table)
