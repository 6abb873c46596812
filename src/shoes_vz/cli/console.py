"""The CLI's two consoles and its one way to fail: every command prints through these.

`run` is the only place an error becomes what a person sees: one `error: …` line on stderr and a
non-zero exit — for shoes-vz's own errors, OS errors (bad paths, ports in use), usage errors and
Ctrl-C alike. `--debug` (or `SHOESVZ_DEBUG=1`) adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape

from shoes_vz.core.errors import Interrupted, ShoesVzError

DEBUG_ENV = "SHOESVZ_DEBUG"
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# piped output (CI logs, `| tee`) keeps whole table rows instead of rich's 80-column default
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(width=_WIDTH, soft_wrap=True)  # long paths stay copy-pasteable: never hard-wrapped
err = Console(stderr=True, width=_WIDTH, soft_wrap=True)


def debug() -> bool:
    """Whether errors show their traceback (`shoes-vz --debug …` sets the variable for children too)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_line(message: str) -> None:
    """`error: …` (verbatim: brackets in paths and package extras are not markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}")


def fail(e: BaseException | str) -> typer.Exit:
    """Print the error's one line (and its traceback with --debug) → exit 1."""
    if isinstance(e, BaseException) and debug():
        err.print("".join(traceback.format_exception(e)), end="", markup=False, highlight=False)
    error_line(str(e))
    return typer.Exit(1)


def describe(e: BaseException) -> tuple[str, int]:
    """The line a person reads for `e`, and the exit code."""
    if isinstance(e, Interrupted):
        return f"interrupted: {e}" if str(e) else "interrupted", INTERRUPTED
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(e, ShoesVzError):
        return str(e), 1
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}", 1
    if isinstance(e, typer.TyperException):  # click's usage errors: bad option, bad value, missing one
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return f"{e.format_message()}{hint}", int(getattr(e, "exit_code", 2))
    return f"unexpected {type(e).__name__}: {e} (a bug: run again with --debug and report the traceback)", 1


def run(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run the CLI; every error leaves as one line (with --debug, its traceback first)."""
    try:
        rv = app(args=args, prog_name="shoes-vz", standalone_mode=False)
    except typer.Abort:
        error_line("aborted")
        return 1
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `shoes-vz template`: the help, not an error
            out.print(str(e.format_message()) if isinstance(e, typer.TyperException) else "", markup=False)
            return 2
        message, code = describe(e)
        if debug():
            err.print("".join(traceback.format_exception(e)), end="", markup=False, highlight=False)
        error_line(message)
        return code
    if rv == INTERRUPTED:  # Ctrl-C in a command that does not catch it (typer turns it into exit 130)
        error_line("interrupted")
    return rv if isinstance(rv, int) else 0
