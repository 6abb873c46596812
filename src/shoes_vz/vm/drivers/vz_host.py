"""The host as the vz driver needs it: its real macOS version, and a process that is not root.

* Version: `platform.mac_ver()` reads SystemVersion.plist, which macOS answers with a compatibility
  version for binaries built against an older SDK: an interpreter built before the macOS 26 SDK sees
  "16.0" on macOS 26 (python/cpython#135675). The kernel's `kern.osproductversion` is not subject to
  that shim, and `sw_vers` is a current system binary; each is asked with SYSTEM_VERSION_COMPAT=0.
  Should only the plist answer, 16.x is read as 26.x (there is no macOS 16: 15 was followed by 26).
* User: macOS 15+ guests fail to start with `VZErrorDomain Code=1` when the VM's process runs as
  root (tart#921), and from macOS 15 the framework needs the unlocked login keychain of the user
  running the VM, which root does not have. Every command that starts a VM refuses root
  (docs/macos-host.md).

No PyObjC here; this module loads on Linux.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Sequence

from shoes_vz.vm.drivers.vz_errors import VZDriverError, config_error

Run = Callable[[Sequence[str]], str]
COMPAT_MAJOR, REAL_MAJOR = 16, 26  # what old-SDK binaries are told on macOS 26, and the truth
_PROBES = (["sysctl", "-n", "kern.osproductversion"], ["sw_vers", "-productVersion"])


def _ask(argv: Sequence[str]) -> str:
    env = {**os.environ, "SYSTEM_VERSION_COMPAT": "0"}
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=5, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def parse_version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.strip().split(".")[:2] if p.isdigit()] + [0, 0]
    return parts[0], parts[1]


def real_macos_version(mac_ver: str, ask: Run = _ask) -> tuple[int, int]:
    """(major, minor) of the running macOS; `mac_ver` is `platform.mac_ver()[0]` ("" off macOS)."""
    if not mac_ver:
        return (0, 0)
    for argv in _PROBES:
        version = parse_version(ask(argv))
        if version[0]:
            return version
    major, minor = parse_version(mac_ver)
    return (REAL_MAJOR, minor) if major == COMPAT_MAJOR else (major, minor)


def host_macos() -> tuple[int, int]:
    """The host's macOS version as (major, minor); (0, 0) when not macOS."""
    return real_macos_version(platform.mac_ver()[0])


def effective_uid() -> int:
    return os.geteuid()


ROOT_REASON = ("macOS 15+ guests fail with `VZErrorDomain Code=1` when the VM's process runs as root (tart#921), "
               "and from macOS 15 the framework needs the unlocked login keychain of the user running the VM")


def refuse_root(what: str) -> None:
    """CONFIG_ERROR when this process runs as root (see the module docstring)."""
    if effective_uid() == 0:
        raise config_error(f"{what} refuses to run as root: {ROOT_REASON}. Run it as the normal user the agent "
                           "runs as, logged in to the GUI with an unlocked login keychain (docs/macos-host.md)")


__all__ = ["ROOT_REASON", "VZDriverError", "effective_uid", "host_macos", "parse_version", "real_macos_version",
           "refuse_root"]
