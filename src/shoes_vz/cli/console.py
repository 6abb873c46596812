"""The CLI's two consoles and its one way to fail: every command prints through these."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

# piped output (CI logs, `| tee`) keeps whole table rows instead of rich's 80-column default
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(width=_WIDTH, soft_wrap=True)  # long paths stay copy-pasteable: never hard-wrapped
err = Console(stderr=True, width=_WIDTH, soft_wrap=True)


def fail(e: Exception | str) -> typer.Exit:
    """Print `error: …` (verbatim: brackets in paths and package extras are not markup) → exit 1."""
    err.print(f"[bold red]error:[/] {escape(str(e))}")
    return typer.Exit(1)
