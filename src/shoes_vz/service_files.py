"""The files that run shoes-vz as a service: launchd property lists on macOS, systemd units on Linux.

The shapes are docs/macos-host.md's: the vz agent is a **LaunchAgent** in the GUI session of the
(non-root) user that runs VMs, loaded in `gui/<uid>` after an automatic login — a LaunchDaemon runs
outside that session and Virtualization.framework then fails (doctor checks it). The server needs
no GUI session: a **LaunchDaemon** with `UserName`. On Linux the server (and the sim agent) are
systemd units. Every file starts the interpreter this command runs with, by its absolute path (the
one sign-python signed), restarts on failure, names its log file and reads an environment file
(for the tokens, kept out of the unit).
"""

from __future__ import annotations

import plistlib
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from shoes_vz.core.errors import ConfigError

LABELS = {"server": "dev.shoes-vz.server", "agent": "dev.shoes-vz.agent"}
UNITS = {"server": "shoes-vz-server.service", "agent": "shoes-vz-agent.service"}
ROOT_AGENT = ("the vz agent must not run as root (macOS 15+ guests fail to start; root has no login keychain): "
              "install it for the user that runs VMs, e.g. `sudo -u svc -i shoes-vz service install agent` "
              "(docs/macos-host.md)")


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    home: Path

    @classmethod
    def named(cls, name: str) -> ServiceUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"no user {name!r} on this host") from None
        return cls(entry.pw_name, entry.pw_uid, Path(entry.pw_dir))


@dataclass(frozen=True)
class ServiceFile:
    """One file to write: where, what, and the commands that load and unload it."""

    path: Path
    content: bytes
    load: list[str]
    unload: list[str]
    log_file: Path
    env_file: Path | None  # systemd's EnvironmentFile (launchd has none)


def command(role: str, config: Path) -> list[str]:
    """The command line a service runs: this interpreter, absolute, never a PATH lookup."""
    return [str(Path(sys.executable).absolute()), "-m", "shoes_vz.cli.main", role, "--config", str(config)]


def launchd(role: str, config: Path, user: ServiceUser) -> ServiceFile:
    """The agent: a LaunchAgent of `user`; the server: a LaunchDaemon that runs as `user`. launchd
    has no environment file: the tokens live in the config file (keep it 0600)."""
    if role == "agent" and user.uid == 0:
        raise ConfigError(ROOT_AGENT)
    label = LABELS[role]
    log_file = user.home / ".shoes-vz" / f"{role}.log"
    plist: dict[str, object] = {
        "Label": label,
        "ProgramArguments": command(role, config),
        "RunAtLoad": True,
        # always back (upstream's {SuccessfulExit: false} left an agent down after a clean exit);
        # `launchctl bootout` is how it stays stopped
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "StandardOutPath": str(log_file),
        "StandardErrorPath": str(log_file),
        "WorkingDirectory": str(user.home),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
    }
    if role == "agent":
        plist["LimitLoadToSessionType"] = "Aqua"   # only in the GUI login session (the keychain, VZ)
        plist["AbandonProcessGroup"] = True        # a restarted agent re-adopts its running `vm run`s
        plist["ProcessType"] = "Interactive"       # not throttled like a background job: VMs need the CPU
        path = user.home / "Library" / "LaunchAgents" / f"{label}.plist"
        domain = f"gui/{user.uid}"
    else:
        plist["UserName"] = user.name
        path = Path("/Library/LaunchDaemons") / f"{label}.plist"
        domain = "system"
    return ServiceFile(path, plistlib.dumps(plist), ["launchctl", "bootstrap", domain, str(path)],
                       ["launchctl", "bootout", f"{domain}/{label}"], log_file, None)


def systemd(role: str, config: Path, user: ServiceUser, env_file: Path, unit_dir: Path = Path("/etc/systemd/system"),
            log_dir: Path = Path("/var/log/shoes-vz")) -> ServiceFile:
    """The server, or the sim agent, as a systemd unit."""
    unit = UNITS[role]
    log_file = log_dir / f"{role}.log"
    extra = ""
    if role == "agent":
        # a restarted agent re-adopts its running `vm run`s: stopping it must not kill them
        extra = "KillMode=process\n"
    text = f"""# shoes-vz {role}, written by `shoes-vz service install {role}` (docs/operations.md)
[Unit]
Description=shoes-vz {role}
Documentation=https://github.com/shoes-vz/shoes-vz/blob/main/docs/operations.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user.name}
EnvironmentFile=-{env_file}
Environment=PYTHONUNBUFFERED=1
ExecStart={" ".join(command(role, config))}
Restart=on-failure
RestartSec=5
{extra}StandardOutput=append:{log_file}
StandardError=append:{log_file}
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
"""
    path = unit_dir / unit
    return ServiceFile(path, text.encode(), ["systemctl", "daemon-reload", "&&", "systemctl", "enable", "--now", unit],
                       ["systemctl", "disable", "--now", unit], log_file, env_file)


__all__ = ["LABELS", "UNITS", "ServiceFile", "ServiceUser", "command", "launchd", "systemd"]
