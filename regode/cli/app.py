"""The ``regode`` application object, its error handling and the console script.

Each command lives in its own module of this package as a thin call into the library; its choices
and defaults come from the torch-free config classes (regode.config), and heavy imports (torch)
happen inside the command, so ``regode --help`` is instant.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
from typing import Callable

import typer

app = typer.Typer(
    name="regode",
    help="3D brain MRI registration with learned neural-ODE models and neural fields; ANTs-compatible files.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def user_errors(fn: Callable) -> Callable:
    """Turn a RegodeError into one ``regode: error: ...`` line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import RegodeError

        try:
            return fn(*args, **kwargs)
        except RegodeError as exc:
            print(f"regode: error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


def choices(name: str, values) -> type[enum.Enum]:
    """A string enum of a config's allowed ``values``, for typer's choices."""
    return enum.Enum(name, {v: v for v in values}, type=str)


def main() -> None:
    """The ``regode`` console script. Once a command has returned (its files written and moved
    into place, every writer thread joined), the process ends without the interpreter's shutdown:
    unloading PyTorch's modules takes 0.5-1 s on this 2-core CPU, time a user waits for and that
    does nothing for them. Output streams are flushed first; an uncaught exception still takes the
    normal path (traceback, shutdown)."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):  # e.g. `regode --help | head`
            pass
    os._exit(code)
