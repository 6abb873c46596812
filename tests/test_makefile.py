"""The Makefile: `make help` lists every target with its description, and every target that needs the
venv or system packages sets itself up first (scripts/setup), as .ci/run does."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from stack_fixtures import require

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = (REPO / "Makefile").read_text()
TARGETS = re.findall(r"^([a-z][a-z-]*):", MAKEFILE, flags=re.M)
SETUP_FOR = {"run": "run", "test": "test", "bench": "test", "lint": "venv", "proto": "venv",
             "proto-check": "venv", "docs": "venv", "screenshots": "test", "soak": "test", "chaos": "test"}


def make(*args: str) -> str:
    require(shutil.which("make") is not None, "make")
    done = subprocess.run(["make", "-s", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_target_is_phony_and_described() -> None:
    phony = set(re.search(r"^\.PHONY: (.*)$", MAKEFILE, flags=re.M).group(1).split())  # type: ignore[union-attr]
    described = set(re.findall(r"^## ([a-z-]+): \S", MAKEFILE, flags=re.M))
    assert set(TARGETS) == phony == described
    assert {"run", "test", "bench", "lint", "proto", "proto-check", "clean", "help", "docs"} <= set(TARGETS)


def test_make_help_lists_every_target_with_its_description() -> None:
    shown = dict(re.findall(r"^  make (\S+) +(.+)$", make("help"), flags=re.M))
    assert set(shown) == set(TARGETS)
    assert shown["proto-check"].startswith("fail, naming the files")
    assert make() == make("help")  # plain `make` helps rather than doing something


@pytest.mark.parametrize("target", sorted(SETUP_FOR))
def test_each_target_sets_itself_up_first(target: str) -> None:
    commands = make("-n", target).splitlines()
    assert commands[0] == f"scripts/setup {SETUP_FOR[target]}", commands


def test_make_run_and_make_test_run_what_the_readme_says() -> None:
    assert make("-n", "run").splitlines()[1:] == [".venv/bin/shoes-vz up"]
    assert make("-n", "test").splitlines()[1:] == [".venv/bin/python -m pytest -q"]


def test_ci_sets_up_with_the_same_script_then_runs_make_test() -> None:
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-2:] == ["scripts/setup test", "make test"]
    assert "apt-get" not in "\n".join(ci)  # the package list lives in one place: scripts/system-packages
