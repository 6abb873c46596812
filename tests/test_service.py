"""`shoes-vz service install|uninstall`: the launchd property lists (checked with plistlib, as
launchd reads them) and the systemd units (checked by `systemd-analyze verify`), written where they
go, loaded by the command printed, removed again."""

from __future__ import annotations

import os
import plistlib
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stack_fixtures import CLI, cli_env, one_error_line, require


def shoes_vz(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=cli_env(), cwd=cwd)


def verify(unit: Path) -> str:
    """systemd-analyze verify's complaints (it exits 0 on many of them: the output is what counts)."""
    tool = shutil.which("systemd-analyze")
    require(tool is not None, "systemd-analyze (apt-get install systemd)")
    assert tool is not None
    p = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=unit.parent)
    return (p.stdout + p.stderr).strip() + (f" (exit {p.returncode})" if p.returncode else "")


def service_user() -> pwd.struct_passwd:
    """A user of this host that is not root (the agent must not run as root)."""
    return next(u for u in pwd.getpwall() if u.pw_uid != 0 and u.pw_name in ("nobody", "daemon", os.environ.get(
        "USER", "")) or u.pw_uid >= 1000)


@pytest.mark.parametrize("role", ["agent", "server"])
def test_launchd_plist_round_trips_with_the_shape_macos_needs(role: str) -> None:
    user = service_user()
    p = shoes_vz("service", "install", role, "--platform", "macos", "--user", user.pw_name, "--dry-run")
    assert p.returncode == 0, p.stderr
    raw = p.stdout.encode()
    plist = plistlib.loads(raw)
    assert plistlib.dumps(plist) == raw  # what launchd reads is exactly what was written
    home = Path(user.pw_dir)
    assert plist["Label"] == f"dev.shoes-vz.{role}"
    args = plist["ProgramArguments"]
    assert Path(args[0]).is_absolute() and args[0] == str(Path(sys.executable).absolute())
    assert Path(args[0]).exists()
    assert args[1:5] == ["-m", "shoes_vz.cli.main", role, "--config"] and args[5] == str(home / ".shoes-vz" /
                                                                                          "shoes-vz.toml")
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(home / ".shoes-vz" / f"{role}.log")
    if role == "agent":  # a LaunchAgent in the GUI session (docs/macos-host.md); VMs outlive an agent restart
        assert plist["LimitLoadToSessionType"] == "Aqua" and plist["AbandonProcessGroup"] is True
        assert "UserName" not in plist
    else:  # a LaunchDaemon that runs as the user
        assert plist["UserName"] == user.pw_name and "LimitLoadToSessionType" not in plist


def test_the_agent_plist_refuses_root() -> None:
    p = shoes_vz("service", "install", "agent", "--platform", "macos", "--user", "root", "--dry-run")
    assert p.returncode == 1
    assert "must not run as root" in one_error_line(p.stderr)


@pytest.mark.parametrize("role", ["server", "agent"])
def test_systemd_unit_installs_verifies_and_uninstalls(role: str, tmp_path: Path) -> None:
    dest = tmp_path / "units"
    config = tmp_path / "shoes-vz.toml"
    p = shoes_vz("service", "install", role, "--platform", "linux", "--user", "root", "--config", str(config),
                 "--dest", str(dest))
    assert p.returncode == 0, p.stderr
    unit = dest / f"shoes-vz-{role}.service"
    assert f"load it: systemctl daemon-reload && systemctl enable --now shoes-vz-{role}.service" in p.stdout
    text = unit.read_text()
    assert verify(unit) == ""
    lines = set(text.splitlines())
    python = str(Path(sys.executable).absolute())
    assert f"ExecStart={python} -m shoes_vz.cli.main {role} --config {config}" in lines
    assert {"Restart=on-failure", f"EnvironmentFile=-/etc/shoes-vz/{role}.env",
            f"StandardOutput=append:/var/log/shoes-vz/{role}.log", "WantedBy=multi-user.target"} <= lines
    assert ("KillMode=process" in lines) == (role == "agent")  # VMs outlive an agent restart
    env = dest / f"{role}.env"  # staged beside the unit, for /etc/shoes-vz
    assert env.stat().st_mode & 0o777 == 0o600  # it holds tokens
    # again: the same file is fine; a different one is refused, not overwritten
    assert shoes_vz("service", "install", role, "--platform", "linux", "--user", "root", "--config", str(config),
                    "--dest", str(dest)).returncode == 0
    other = shoes_vz("service", "install", role, "--platform", "linux", "--user", "root", "--dest", str(dest))
    assert other.returncode == 1 and "exists and differs" in one_error_line(other.stderr)
    assert unit.read_text() == text
    gone = shoes_vz("service", "uninstall", role, "--platform", "linux", "--user", "root", "--dest", str(dest))
    assert gone.returncode == 0, gone.stderr
    assert f"unload it first: systemctl disable --now shoes-vz-{role}.service" in gone.stdout
    assert not unit.exists() and env.exists()  # the environment file (tokens) stays


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit with a bad directive is reported."""
    dest = tmp_path / "units"
    assert shoes_vz("service", "install", "server", "--platform", "linux", "--user", "root", "--dest",
                    str(dest)).returncode == 0
    unit = dest / "shoes-vz-server.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert "Failed to parse service restart specifier" in verify(unit)


def test_an_unknown_user_is_one_clear_error() -> None:
    p = shoes_vz("service", "install", "server", "--platform", "linux", "--user", "no-such-user-x", "--dry-run")
    assert p.returncode == 1 and "no user 'no-such-user-x'" in one_error_line(p.stderr)
