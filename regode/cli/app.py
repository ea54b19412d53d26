"""The ``regode`` application object, its error handling and the console script.

Each command lives in its own module of this package as a thin call into the library; its choices
and defaults come from the torch-free config classes (regode.config), and heavy imports (torch)
happen inside the command, so ``regode --help`` is instant.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from ..options.cli import keyword

app = typer.Typer(
    name="regode",
    help="3D brain MRI registration with learned neural-ODE models and neural fields; ANTs-compatible files.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        print(f"regode {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print regode's version and exit.")
    ] = False,
) -> None:
    """3D brain MRI registration with learned neural-ODE models and neural fields; ANTs-compatible files."""


QUIET = keyword("quiet", bool, "--quiet", "-q", default=False, help="No progress bar.")
"""``--quiet`` of the commands that show a progress bar."""


def user_errors(fn: Callable) -> Callable:
    """Turn a RegodeError into one ``regode: error: ...`` line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import RegodeError

        try:
            return fn(*args, **kwargs)
        except RegodeError as exc:
            print(f"regode: error: {exc}", file=sys.stderr)
        except OSError as exc:  # the system said no (a full disk, a vanished folder, ...): one line naming the file
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"regode: error: {where}{exc.strerror or exc}", file=sys.stderr)
        except EOFError:  # a file that ends early, where no reader said which (click would print "Aborted!")
            print("regode: error: a file ended before its data did (a truncated input)", file=sys.stderr)
        except MemoryError:
            print(
                "regode: error: out of memory (a smaller --spacing grid, fewer --threads or a larger machine)",
                file=sys.stderr,
            )
        raise typer.Exit(1)

    return wrapper


def _terminate(signum, frame) -> None:
    """SIGTERM (a scheduler's kill, ``timeout``) unwinds like Ctrl-C: staged outputs are removed."""
    raise SystemExit(128 + signum)


def run(args: list[str] | None = None) -> int:
    """Run the command line and return its exit code: 0, 1 for a ``regode: error:`` line, 2 for a
    bad command line (one ``regode: error:`` line too, not click's usage box), 130 on Ctrl-C and
    143 on SIGTERM."""
    try:  # typer >= 0.2x carries its own copy of click
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=args, standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.NoArgsIsHelpError as exc:  # ``regode`` alone, or a command without its options: the help
        print(exc.format_message())
        return 0
    except click.UsageError as exc:
        command = exc.ctx.command_path.partition(" ")[2] if exc.ctx is not None else ""
        message = exc.format_message().replace("Value error, ", "")
        where, see = (f"{command}: ", f"{command} ") if command else ("", "")
        print(f"regode: error: {where}{message} (see regode {see}-h)", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"regode: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("regode: error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    """The ``regode`` console script. Once a command has returned (its files written and moved
    into place, every writer thread joined), the process ends without the interpreter's shutdown:
    unloading PyTorch's modules takes 0.5-1 s on a 2-core CPU, time a user waits for and that
    does nothing for them. Output streams are flushed first; an uncaught exception still takes the
    normal path (traceback, shutdown)."""
    code = run()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):  # e.g. `regode --help | head`
            pass
    os._exit(code)
