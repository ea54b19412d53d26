"""The command line of a :class:`~regode.options.settings.Spec`: one typer option per declared
setting with a flag (:func:`command`), and the same parser for a cohort manifest's ``options``
cell (:func:`parse_args`)."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from ..errors import RegodeError
from .schema import Leaf, _item, _optional, convert
from .settings import Spec, read_file, resolve, to_toml


def _choices(name: str, values) -> type[enum.Enum]:
    return enum.Enum(name, {v: v for v in values}, type=str)


def parameter(leaf: Leaf, name: str, default: Any = None, help_suffix: str = "") -> inspect.Parameter:
    """The typer parameter of a declared setting (``name``: the Python parameter's name)."""
    import typer

    option, kind = leaf.option, _optional(leaf.type)[0]
    item = _item(kind)
    text = (
        option.help
        + (f" ({option.unit})" if option.unit and f"({option.unit}" not in option.help else "")
        + help_suffix
    )
    flags = [leaf.flag] + ([option.short] if option.short else [])
    shown: Any = True
    if kind is bool:
        flags[0] = f"{leaf.flag}/--no-{leaf.flag[2:]}"
        annotation: Any = bool | None
    elif item is not None and option.separator is None:
        annotation = list[str] | None
        default, shown = None, False
    elif item is not None:
        annotation = str | None
        default = option.separator.join(map(str, default)) if default else None
    elif option.choices is not None:
        annotation = _choices(name.title().replace("_", ""), option.choices) | None
    elif option.none is not None:
        annotation, shown = str | None, option.none if default is None else True
        default = option.none if default is None else default
    else:
        annotation = kind | None
    if leaf.required:
        text += " [required unless --config gives it]"
    info = typer.Option(*flags, help=text, show_default=shown)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, info]
    )


def parameters(leaves_by_name: dict[str, Leaf]) -> dict[str, tuple[inspect.Parameter, Leaf]]:
    """``{python name: (parameter, leaf)}`` for the leaves that have a flag (checked unique)."""
    out, flags = {}, {}
    for name, leaf in leaves_by_name.items():
        if leaf.flag is None:
            continue
        if leaf.flag in flags:
            raise TypeError(f"flag {leaf.flag} is declared by {flags[leaf.flag]} and {name}")
        flags[leaf.flag] = name
        python = "opt_" + name.replace(".", "__")
        out[python] = (parameter(leaf, python, leaf.default), leaf)
    return out


def given(ctx, params: dict[str, tuple[inspect.Parameter, Leaf]], values: dict[str, Any]) -> dict:
    """``{dotted name: value}`` of the options given on the command line (not their defaults)."""
    out = {}
    for python, (_, leaf) in params.items():
        source = ctx.get_parameter_source(python)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out[leaf.name] = convert(leaf, values[python])
    return out


def signed(function: Callable, parameters: list[inspect.Parameter], name: str | None = None, doc: str | None = None):
    """``function`` (taking ``ctx`` and keyword arguments) with the signature typer reads."""
    function.__signature__ = inspect.Signature(parameters)
    function.__annotations__ = {p.name: p.annotation for p in parameters}
    if name is not None:
        function.__name__ = name
    if doc is not None:
        function.__doc__ = doc
    return function


def keyword(name: str, kind: Any, *flags: str, default: Any = inspect.Parameter.empty, help: str | None = None,
            **option) -> inspect.Parameter:  # fmt: skip
    """A typer option of a command's own (``--out``, ``--quiet``) as a keyword parameter
    (``default`` left out: required)."""
    import typer

    info = typer.Option(*flags, help=help, **option)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def context_parameter() -> inspect.Parameter:
    """The ``ctx`` parameter of a generated command (typer passes its click context there)."""
    import typer

    return inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)


def command(
    name: str, spec: Spec, run: Callable, extras: list[inspect.Parameter], help: str, with_preset: bool = False
):
    """The typer function of ``regode NAME``: one option per declared setting of ``spec``
    with a flag, and ``extras`` (the command's own arguments: ``--out``, ``--quiet``), plus
    ``--config`` and ``--print-config``. ``run(resolved, **extras)`` does the work."""

    params = parameters({n: leaf for n, (_, leaf) in spec.leaves().items()})
    own = [
        keyword("config", Path | None, "--config", default=None, help="Settings from a TOML file, or from the "
                "PREFIXregode.json of an earlier run (replay); options given here win."),
        keyword("print_config", bool, "--print-config", default=False,
                help="Print the resolved settings as TOML (for --config) and exit."),
    ]  # fmt: skip
    if with_preset:
        preset_choices = _choices(f"{name.title().replace('-', '')}Preset", tuple(spec.presets))
        own.append(keyword("preset", preset_choices | None, "--preset", default=None, help=_preset_help(spec)))

    def function(ctx, **values):
        cli = given(ctx, params, values)
        preset = values.pop("preset", None)
        preset = getattr(preset, "value", preset)
        layers = [("config file", read_file(values["config"], spec))] if values["config"] else []
        resolved = resolve(spec, [*layers, ("command line", cli)], preset)
        if values["print_config"]:
            print(to_toml(spec, resolved), end="")
            return
        run(resolved, **{p.name: values[p.name] for p in extras})

    signature = [context_parameter(), *extras, *(p for p, _ in params.values()), *own]
    return signed(function, signature, name.replace("-", "_"), help)


def _preset_help(spec: Spec) -> str:
    parts = []
    for preset, values in spec.presets.items():
        known = spec.leaves()
        said = ", ".join(f"{known[n][1].label} {_spelled(known[n][1], v)}" for n, v in values.items())
        parts.append(f"{preset} = {said}")
    return "Settings for a kind of pair, where neither an option nor --config gives them: " + "; ".join(parts) + "."


def _spelled(leaf: Leaf, value) -> str:
    if value is None:
        return leaf.option.none or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_args(spec: Spec, section: str, args: list[str]) -> tuple[dict[str, Any], str | None, str | None]:
    """A cohort manifest's options (``args``, as on the command line) against the settings of
    ``spec``'s ``section``: ``({dotted name: value}, --preset, --config)``. Uses the command
    line's own parser, so a row accepts exactly what the command does."""
    click_command = _row_parser(spec, section)
    try:
        ctx = click_command.make_context(spec.command, list(args))
        return click_command.invoke(ctx)
    except RegodeError:
        raise
    except Exception as exc:  # click's usage errors (typer's own copy of click): one line
        message = (exc.format_message() if hasattr(exc, "format_message") else str(exc)).replace("Value error, ", "")
        raise RegodeError(f"options: {message}") from None


_PARSERS: dict[tuple[str, str], Any] = {}
"""the click command of each spec's section, built once (a cohort parses every row with it)."""


def _row_parser(spec: Spec, section: str):
    import typer

    key = (spec.command, section)
    if key not in _PARSERS:
        params = parameters({n: leaf for n, (s, leaf) in spec.leaves().items() if s == section})

        def function(ctx, preset=None, config=None, **values):
            return given(ctx, params, values), preset, config

        own = [keyword(name, str | None, f"--{name}", default=None) for name in ("preset", "config")]
        signed(function, [context_parameter(), *(p for p, _ in params.values()), *own])
        app = typer.Typer()
        app.command(spec.command)(function)
        app.command("_")(lambda: None)  # two commands: typer keeps the group, whose subcommand we call
        _PARSERS[key] = typer.main.get_command(app).commands[spec.command]
    return _PARSERS[key]
