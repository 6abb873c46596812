"""Help that reads well: every option and argument explains itself, `--version`, `--config`'s help
survives rich markup, and a refused value lists the valid ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import typer

from shoes_vz import __version__
from shoes_vz.cli.main import app

CLI = [sys.executable, "-m", "shoes_vz.cli.main"]


def _commands(cmd: Any, path: str = "shoes-vz") -> Iterator[tuple[str, Any]]:
    yield path, cmd
    if hasattr(cmd, "commands"):  # a group (typer's click is vendored: no isinstance on its classes)
        for name, sub in cmd.commands.items():
            yield from _commands(sub, f"{path} {name}")


def _root() -> Any:
    return typer.main.get_command(app)


def test_every_option_and_argument_has_help() -> None:
    missing = []
    walked = 0
    for path, cmd in _commands(_root()):
        walked += 1
        if not cmd.help and not cmd.short_help:
            missing.append(f"{path}: the command itself")
        for p in cmd.params:
            if getattr(p, "hidden", False):
                continue
            if not (getattr(p, "help", None) or "").strip():
                missing.append(f"{path} {p.opts[0] if p.opts else p.name}")
    assert walked > 20  # the walk reached the sub-commands (template, plugin call, vm …)
    assert missing == [], "options without help:\n  " + "\n  ".join(missing)


def test_version_flag_on_the_root_command() -> None:
    r = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"shoes-vz {__version__}"


def test_config_help_shows_its_table_names() -> None:
    """rich markup used to eat `[server]/[agent]`: the help read `TOML file (/ tables)`."""
    r = subprocess.run([*CLI, "server", "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "200"})
    assert "[server]" in r.stdout and "[agent]" in r.stdout, r.stdout
    assert "(/ tables)" not in r.stdout


def test_a_refused_driver_lists_the_valid_ones() -> None:
    r = subprocess.run([*CLI, "agent", "--driver", "qemu"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'sim'" in lines[0] and "'vz'" in lines[0], r.stderr
