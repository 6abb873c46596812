"""The sim driver's own options (the agent's opaque `driver_options`) and which mode runs.

Two modes:

- **namespaced** (root on Linux with util-linux `unshare`, iproute2 `ip`, dnsmasq and a DHCP client):
  each guest is a small Linux host of its own namespaces on a per-agent bridge with a real DHCP
  server — see `sim_guest`.
- **loopback** (everything else, e.g. without root or on macOS): sshd and the runner-agent on a
  127.100.x.y address, sharing the host's files, processes and user. Less faithful; it says so.

`mode = "auto"` picks namespaced wherever it can run; tests of the loopback mode force it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from shoes_vz.core.errors import DriverError

LOOPBACK, NAMESPACED = "loopback", "namespaced"
MODES = ("auto", NAMESPACED, LOOPBACK)
MIN_LEASE_SECONDS = 120  # dnsmasq's floor
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SimOptions:
    """`[agent.driver_options]` for the sim (a plain dataclass: `vm run` must start fast)."""

    mode: str = "auto"                              # namespaced where it can run, else loopback
    subnet: ipaddress.IPv4Network | None = None     # default: a free /24 of 198.18.0.0/15 per agent
    pool_size: int | None = None                    # default: the whole subnet (253 in a /24, as bootpd)
    lease_seconds: int = 600                        # DHCP lease time (bootpd's default is 86400)
    dhcp_release: bool = True                       # the guest releases its lease on a clean shutdown
    network_linger: float = 2.0                     # seconds the bridge outlives the last VM
    dhcp_timeout: float = 3.0                       # seconds per round of the guest's DHCP client
    # while this file exists a start is refused as VZ refuses one over its VM limit (error code 6): the
    # VM-limit leak, switched on and off by a test (agent/degraded.py); empty: never
    refuse_start_file: str = ""
    # models a restored guest that runs no code (VZ restores into a mismatched device set and resumes a
    # guest that never runs: tailscale PR #19331): its processes stop right after a restore
    restore_stalls: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode: one of {', '.join(MODES)}, not {self.mode!r}")
        if self.subnet is not None and (self.subnet.prefixlen > 29 or not self.subnet.is_private):
            problems.append(f"subnet: a private range of at least a /29, not {self.subnet}")
        if self.pool_size is not None and (type(self.pool_size) is not int or self.pool_size < 1):
            problems.append(f"pool_size: a whole number >= 1, not {self.pool_size!r}")
        if type(self.lease_seconds) is not int or self.lease_seconds < MIN_LEASE_SECONDS:
            problems.append(f"lease_seconds: a whole number >= {MIN_LEASE_SECONDS} (dnsmasq's minimum), "
                            f"not {self.lease_seconds!r}")
        for flag in ("dhcp_release", "restore_stalls"):
            if type(getattr(self, flag)) is not bool:
                problems.append(f"{flag}: true or false, not {getattr(self, flag)!r}")
        if type(self.refuse_start_file) is not str:
            problems.append(f"refuse_start_file: a path, not {self.refuse_start_file!r}")
        for name, low in (("network_linger", 0.0), ("dhcp_timeout", 0.1)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= 600:
                problems.append(f"{name}: seconds between {low:g} and 600, not {value!r}")
        if problems:
            raise DriverError("invalid sim driver options: " + "; ".join(problems))

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> SimOptions:
        raw = dict(raw or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DriverError(f"unknown sim driver option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if raw.get("subnet") is not None:
            try:
                raw["subnet"] = ipaddress.IPv4Network(str(raw["subnet"]))
            except ValueError as e:
                raise DriverError(f"invalid sim driver options: subnet: {e}") from None
        return cls(**raw)


def _which(name: str) -> str | None:
    return shutil.which(name, path=GUEST_PATH)


def namespaced_missing() -> list[str]:
    """What this host lacks for namespaced guests ([] when they can run)."""
    if not sys.platform.startswith("linux"):
        return [f"Linux (this is {sys.platform})"]
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("dnsmasq", "dnsmasq-base"),
                          ("python3", "python3")):
        if _which(tool) is None:
            missing.append(f"{tool} ({package})")
    if dhcp_client() is None:
        missing.append("a DHCP client: udhcpc (busybox)")
    for ns in ("net", "pid", "mnt", "uts", "ipc"):
        if not os.path.exists(f"/proc/self/ns/{ns}"):
            missing.append(f"{ns} namespaces in the kernel")
    return missing


def dhcp_client() -> list[str] | None:
    """The guest's DHCP client command: busybox's udhcpc."""
    found = _which("udhcpc")
    if found:
        return [found]
    box = _which("busybox")
    return [box, "udhcpc"] if box else None


def resolve_mode(options: SimOptions) -> tuple[str, str]:
    """(mode, why): the mode this VM runs in. Forcing namespaced where it cannot run is a DriverError."""
    missing = namespaced_missing()
    if options.mode == NAMESPACED and missing:
        raise DriverError("the namespaced sim cannot run here: missing " + ", ".join(missing))
    if options.mode == LOOPBACK:
        return LOOPBACK, "loopback mode chosen in the driver options (less faithful)"
    if missing:
        return LOOPBACK, ("LOOPBACK MODE, less faithful: the guest shares the host's files, processes, user and "
                          "network (namespaced guests need " + ", ".join(missing) + ")")
    return NAMESPACED, "namespaced guest (own network, PID and mount namespaces)"
