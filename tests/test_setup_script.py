"""scripts/setup, which `make run`, `make test` and .ci/run start with: system packages, then .venv.

Each test runs the real script in a copy of the repository's set-up files, with real dpkg-query, id
and bash. What must not happen here is stood in for on PATH and logged: `apt-get` (the host's packages
are not ours to change) and the copy's `.venv/bin/python` (pip would install into the real .venv).
The real install is what every `make test` starts with, and the fresh-machine run in the closing notes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack_fixtures import require

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("shoes-vz-test-absent-a", "shoes-vz-test-absent-b")  # no Debian package has these names


def have_dpkg() -> bool:
    return bool(shutil.which("dpkg-query") and shutil.which("apt-get"))


@pytest.fixture
def checkout() -> Iterator[Path]:
    """scripts/ and pyproject.toml in a world-readable directory (a non-root user runs setup in it),
    with a .venv whose stamp matches: the venv step has nothing to do unless a test changes that."""
    d = Path(tempfile.mkdtemp(prefix="shoes-vz-setup-"))
    os.chmod(d, 0o755)
    shutil.copytree(REPO / "scripts", d / "scripts")
    shutil.copy(REPO / "pyproject.toml", d)
    (d / ".venv" / "bin").mkdir(parents=True)
    stand_in(d / ".venv" / "bin" / "python", d / "python.log")
    stamp(d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stand_in(path: Path, log: Path, version_ok: bool = True) -> None:
    """A python that logs its arguments: `-m pip …` succeeds doing nothing, the rest runs for real."""
    check = "" if version_ok else 'case "$1" in -c) exit 1 ;; -V) echo "Python 3.9.6"; exit 0 ;; esac\n'
    path.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{check}[ "$1" = -m ] && exit 0\nexec {sys.executable} "$@"\n')
    path.chmod(0o755)


def stamp(d: Path) -> None:
    crc = subprocess.run(["cksum"], stdin=(d / "pyproject.toml").open(), capture_output=True, text=True).stdout
    (d / ".venv" / ".installed").write_text(f"{crc.strip()} dev\n")


def packages(d: Path, *lines: str) -> None:
    (d / "scripts" / "system-packages").write_text("# test list\n" + "".join(f"{ln}\n" for ln in lines))


def fake_apt(d: Path, fails: bool = False) -> dict[str, str]:
    """PATH with an apt-get that logs its arguments (and optionally fails like a broken mirror)."""
    bin_dir = d / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    body = 'echo "E: Unable to locate package $*" >&2; exit 100' if fails else "exit 0"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {d / "apt.log"}\n{body}\n')
    (bin_dir / "apt-get").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def setup(d: Path, purpose: str, env: dict[str, str] | None = None, user: int | None = None
          ) -> subprocess.CompletedProcess[str]:
    argv = [str(d / "scripts" / "setup"), purpose]
    if user is not None and os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {k: v for k, v in (env or os.environ).items() if k not in ("SHOESVZ_SETUP_NO_PACKAGES", "PY")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_missing_packages_as_a_user_stop_before_anything_with_the_command(checkout: Path) -> None:
    require(have_dpkg(), "dpkg-query and apt-get (Debian/Ubuntu)")
    packages(checkout, "bash  run  every system has it", f"{ABSENT[0]}  run  absent", f"{ABSENT[1]}  test  absent")
    shutil.rmtree(checkout / ".venv")

    done = setup(checkout, "test", user=65534)  # nobody
    assert done.returncode == 1
    sudo = "sudo " if shutil.which("sudo") else ""
    command = f"apt-get install -y {ABSENT[0]} {ABSENT[1]}"
    assert done.stderr.splitlines() == [
        f"setup: missing system packages: {ABSENT[0]} {ABSENT[1]} (why: scripts/system-packages)",
        "setup: install them, then run this again:",
        f"setup:     {sudo}{command}" if sudo else f"setup:     su -c '{command}'",
    ]
    assert done.stdout == ""
    assert not (checkout / ".venv").exists()  # stopped before doing anything


def test_make_run_asks_only_for_what_it_needs(checkout: Path) -> None:
    require(have_dpkg(), "dpkg-query and apt-get (Debian/Ubuntu)")
    packages(checkout, "bash  run  present", f"{ABSENT[1]}  test  only make test needs this")
    assert setup(checkout, "run", user=65534).returncode == 0
    assert ABSENT[1] in setup(checkout, "test", user=65534).stderr


def test_missing_packages_as_root_are_installed_quietly_with_one_line(checkout: Path) -> None:
    require(have_dpkg(), "dpkg-query and apt-get (Debian/Ubuntu)")
    require(os.geteuid() == 0, "root")
    packages(checkout, "bash  run  present", f"{ABSENT[0]}  run  absent")
    done = setup(checkout, "run", env=fake_apt(checkout))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"setup: installing system packages with apt-get: {ABSENT[0]}"]
    assert (checkout / "apt.log").read_text().splitlines() == [
        "apt-get update -qq", f"apt-get install -y -qq --no-install-recommends {ABSENT[0]}"]


def test_a_failed_install_shows_apt_and_stops(checkout: Path) -> None:
    require(have_dpkg(), "dpkg-query and apt-get (Debian/Ubuntu)")
    require(os.geteuid() == 0, "root")
    packages(checkout, f"{ABSENT[0]}  run  absent")
    done = setup(checkout, "run", env=fake_apt(checkout, fails=True))
    assert done.returncode == 1
    assert "E: Unable to locate package update -qq" in done.stderr
    assert done.stderr.splitlines()[-1] == f"setup: apt-get could not install {ABSENT[0]} (its last lines above)"
    assert not (checkout / "python.log").exists()  # stopped before the venv step


def test_without_apt_setup_names_the_list_and_the_way_on(checkout: Path) -> None:
    packages(checkout, "openssh-server  run  sshd", "xfsprogs  test  mkfs.xfs")
    tools = checkout / "tools"
    tools.mkdir()
    for tool in ("bash", "awk", "id", "uname", "cksum", "dirname", "cat", "tr"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, tools / tool)
    done = setup(checkout, "test", env={**os.environ, "PATH": str(tools)})
    assert done.returncode == 1
    assert "no apt-get" in done.stderr and "openssh-server xfsprogs" in done.stderr
    assert "SHOESVZ_SETUP_NO_PACKAGES=1" in done.stderr
    env = {**os.environ, "PATH": str(tools), "SHOESVZ_SETUP_NO_PACKAGES": "1"}  # and with it, setup goes on
    done = subprocess.run([str(checkout / "scripts" / "setup"), "test"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout == "", done.stderr


def test_everything_in_place_is_silent_and_leaves_the_venv_alone(checkout: Path) -> None:
    packages(checkout, "bash  run  present")
    for purpose in ("run", "test", "venv"):
        done = setup(checkout, purpose)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (checkout / "python.log").exists()  # not even started


def test_a_changed_pyproject_reinstalls_once(checkout: Path) -> None:
    packages(checkout, "bash  run  present")
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency would go here\n")
    done = setup(checkout, "venv")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "setup: pyproject.toml changed: updating shoes-vz[dev] in .venv\n"
    assert "-m pip install -q -e .[dev]" in (checkout / "python.log").read_text()
    (checkout / "python.log").unlink()
    assert setup(checkout, "venv").stdout == ""
    assert not (checkout / "python.log").exists()


def test_an_old_python_is_refused_before_a_venv_is_made(checkout: Path) -> None:
    shutil.rmtree(checkout / ".venv")
    old = checkout / "python3.9"
    stand_in(old, checkout / "old.log", version_ok=False)
    env = {**os.environ, "SHOESVZ_SETUP_NO_PACKAGES": "1"}
    done = subprocess.run([str(checkout / "scripts" / "setup"), "venv"], capture_output=True, text=True,
                          env={**env, "PY": str(old)})
    assert done.returncode == 1
    assert done.stderr.startswith(f"setup: shoes-vz needs Python >= 3.11; {old} is Python 3.9.6: install Python 3.11")
    assert "PY=python3.11" in done.stderr or "PY=python3.12" in done.stderr
    assert not (checkout / ".venv").exists()
