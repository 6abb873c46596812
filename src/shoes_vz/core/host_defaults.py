"""A host's defaults, per platform: where shoes-vz keeps its files, and how many VMs it may run.

Linux (the sim, CI) keeps the seed's system paths. On macOS the agent and every command that starts
a VM run as one normal user with an unlocked login keychain (docs/macos-host.md): root makes macOS
15+ guests fail (`VZErrorDomain Code=1`) and has no login keychain, so nothing defaults to a path
only root may write. Everything lives under that user's `~/.shoes-vz` (short, no spaces: control
sockets and shell commands stay simple; one APFS volume, so templates and runners clone).
`/var/db/dhcpd_leases` is bootpd's and world-readable on both.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

# Apple's limit on concurrent macOS guests per host (VZErrorVirtualMachineLimitExceeded, reference §5.4)
HOST_VM_LIMIT = 2


@dataclass(frozen=True)
class HostPaths:
    templates_dir: Path
    runners_dir: Path
    state_dir: Path
    runner_state_file: Path       # runner-state.json, for myshoes and other outside readers
    lease_file: Path


def vm_slots_dir(state_dir: Path) -> Path:
    """The host-wide VM slot locks (`vm.host_slots`) of the agent whose state directory this is."""
    return state_dir / "vm-slots"


def user_home(uid: int | None = None) -> Path:
    """The home of `uid` (default: the effective user) from the user database, not $HOME (which sudo
    and launchd may leave pointing elsewhere)."""
    try:
        return Path(pwd.getpwuid(os.geteuid() if uid is None else uid).pw_dir)
    except KeyError:
        return Path.home()


def paths_for(platform: str, home: Path) -> HostPaths:
    if platform == "darwin":
        base = home / ".shoes-vz"
        return HostPaths(templates_dir=base / "templates", runners_dir=base / "runners", state_dir=base / "state",
                         runner_state_file=base / "runner-state.json", lease_file=Path("/var/db/dhcpd_leases"))
    return HostPaths(templates_dir=Path("/opt/myshoes/vz/templates"), runners_dir=Path("/opt/myshoes/vz/runners"),
                     state_dir=Path("/var/lib/shoes-vz"),
                     runner_state_file=Path("/var/run/myshoes/runner-state.json"),
                     lease_file=Path("/var/db/dhcpd_leases"))


DEFAULTS = paths_for(sys.platform, user_home())

__all__ = ["DEFAULTS", "HOST_VM_LIMIT", "HostPaths", "paths_for", "user_home", "vm_slots_dir"]
