"""`shoes-vz doctor`: can this host run vz VMs? Each check is ok, warn or fatal, and says its fix.

Fatal means the vz driver cannot work (the agent must not schedule VMs here); warn means it works
but something will hurt (slow DHCP reuse, prompts, an untested macOS). The probes are injectable so
the logic is tested anywhere; the real ones import PyObjC lazily and only on macOS.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import plistlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shoes_vz.vm.drivers.vz_config import MIN_MACOS

SEED_MACOS = (26, 0)      # what the project is built and tested for (MIN_MACOS: the driver's floor)
KEYCHAIN_MACOS = (15, 0)  # from 15 VZ needs an unlocked login keychain (reference §5.5)
MAX_LEASE_SECONDS = 600
NAT_NETWORK = ipaddress.ip_network("192.168.64.0/24")
LEASE_PLIST = Path("/Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default.plist")
LOCAL_NETWORK_PLIST = Path("/Library/Preferences/com.apple.network.local-network.plist")
ENTITLEMENT = "com.apple.security.virtualization"


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FATAL = "fatal"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str = ""


@dataclass
class Probes:
    """Facts about the host. Each returns a value, or raises to mean "could not tell"."""

    system: Callable[[], str] = platform.system
    macos_version: Callable[[], tuple[int, int]] = lambda: _parse_version(platform.mac_ver()[0])
    machine: Callable[[], str] = platform.machine
    translated: Callable[[], bool] = lambda: _sysctl("sysctl.proc_translated") == "1"
    vz_supported: Callable[[], bool] = lambda: _vz().VZVirtualMachine.isSupported()
    entitlement_error: Callable[[], str | None] = lambda: _entitlement_probe()
    device_of: Callable[[Path], int] = lambda p: os.stat(p).st_dev
    can_clone: Callable[[Path], bool] = lambda p: _can_clone(p)
    lease_seconds: Callable[[], int] = lambda: _lease_seconds()
    keychain_unlocked: Callable[[], bool] = lambda: _keychain_unlocked()
    local_network_ranges: Callable[[], list[str]] = lambda: _local_network_ranges()


def _parse_version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(".")[:2] if p.isdigit()] + [0, 0]
    return parts[0], parts[1]


def _sysctl(name: str) -> str:
    return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, check=False).stdout.strip()


def _vz():  # type: ignore[no-untyped-def]
    import Virtualization  # type: ignore[import-not-found]

    return Virtualization


def _entitlement_probe() -> str | None:
    """The entitlement error text, or None. An empty configuration reports it first (pyobjc #434)."""
    ok, err = _vz().VZVirtualMachineConfiguration.new().validateWithError_(None)
    if ok or err is None:
        return None
    text = str(err.localizedDescription())
    return text if ENTITLEMENT in text else None


def _can_clone(directory: Path) -> bool:
    from shoes_vz.vm.clone import can_reflink

    return can_reflink(directory)


def _lease_seconds() -> int:
    try:
        data = plistlib.loads(LEASE_PLIST.read_bytes())
    except FileNotFoundError:
        return 86400  # bootpd's default (reference §7.1)
    return int(data.get("bootpd", {}).get("DHCPLeaseTimeSecs", 86400))


def _keychain_unlocked() -> bool:
    login = Path.home() / "Library/Keychains/login.keychain-db"
    rc = subprocess.run(["security", "show-keychain-info", str(login)], capture_output=True,
                        check=False).returncode
    return rc == 0


def _local_network_ranges() -> list[str]:
    try:
        data = plistlib.loads(LOCAL_NETWORK_PLIST.read_bytes())
    except FileNotFoundError:
        return []
    return [str(r) for r in data.get("AllowedEthernetLocalNetworkAddresses", [])]


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _try(probe: Callable[[], object]) -> tuple[object, str | None]:
    try:
        return probe(), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def run_checks(probes: Probes, templates_dir: Path, runners_dir: Path) -> list[Check]:
    """Every check in order. Later checks that need macOS or PyObjC are skipped once one is fatal."""
    system = probes.system()
    if system != "Darwin":
        return [Check("platform", Level.FATAL, f"not macOS ({system}): the vz driver needs macOS on "
                      "Apple Silicon", "run the agent on a Mac, or use the sim driver (--driver sim) here")]
    out: list[Check] = [Check("platform", Level.OK, "macOS")]
    ver = probes.macos_version()
    features = (f"{_v(MIN_MACOS)}: save/restore (warm slots) and the Mac keyboard; 15.0: unlocked "
                "login keychain needed; 26.0: ASIF disk images, the tested target")
    if ver < MIN_MACOS:
        out.append(Check("macos-version", Level.FATAL, f"macOS {_v(ver)} < {_v(MIN_MACOS)} ({features})",
                         f"update macOS to {_v(SEED_MACOS)} or later"))
    elif ver < SEED_MACOS:
        out.append(Check("macos-version", Level.WARN, f"macOS {_v(ver)} works but is below the tested "
                         f"{_v(SEED_MACOS)}+ ({features})", f"update macOS to {_v(SEED_MACOS)} or later"))
    else:
        out.append(Check("macos-version", Level.OK, f"macOS {_v(ver)} ({features})"))
    machine, _ = _try(probes.machine)
    translated, _ = _try(probes.translated)
    if machine != "arm64" or translated:
        out.append(Check("apple-silicon", Level.FATAL, f"this Python runs as {machine}"
                         + (" under Rosetta" if translated else "") + "; macOS guests need Apple Silicon "
                         "and an arm64 interpreter", "use an arm64 Python on an Apple Silicon Mac"))
        return out
    out.append(Check("apple-silicon", Level.OK, "arm64"))
    supported, err = _try(probes.vz_supported)
    if err is not None and "No module named" in err:
        out.append(Check("pyobjc", Level.FATAL, f"PyObjC is not installed ({err})",
                         "pip install 'shoes-vz[macos]'"))
        return out
    if not supported:
        out.append(Check("virtualization", Level.FATAL, "VZVirtualMachine.isSupported() is false"
                         + (f" ({err})" if err else "") + ": no hardware virtualization (inside a VM?)",
                         "run on bare-metal Apple Silicon"))
        return out
    out.append(Check("virtualization", Level.OK, "VZVirtualMachine.isSupported()"))
    problem, err = _try(probes.entitlement_error)
    if err is not None or problem:
        out.append(Check("entitlement", Level.FATAL, str(problem or err) + f" ({sys.executable})",
                         "shoes-vz sign-python"))
    else:
        out.append(Check("entitlement", Level.OK, f"{ENTITLEMENT} present on the interpreter image"))
    out.append(_volume_check(probes, templates_dir, runners_dir))
    out.append(_lease_check(probes))
    if ver >= KEYCHAIN_MACOS:
        unlocked, err = _try(probes.keychain_unlocked)
        if unlocked:
            out.append(Check("login-keychain", Level.OK, "login keychain unlocked"))
        else:
            out.append(Check("login-keychain", Level.FATAL if err is None else Level.WARN,
                             "the login keychain is locked or missing: VM start fails on macOS 15+ ("
                             + (err or "security show-keychain-info failed") + ")",
                             "log in once via the GUI with auto-login, or `security unlock-keychain "
                             "~/Library/Keychains/login.keychain-db`"))
        out.append(_local_network_check(probes))
    return out


def _volume_check(probes: Probes, templates_dir: Path, runners_dir: Path) -> Check:
    try:
        same = probes.device_of(templates_dir) == probes.device_of(runners_dir)
    except OSError as e:
        return Check("clone-volume", Level.FATAL, f"cannot stat templates/runners: {e}",
                     f"create {templates_dir} and {runners_dir} on one APFS volume")
    if not same:
        return Check("clone-volume", Level.FATAL, f"{templates_dir} and {runners_dir} are on different "
                     "volumes: clones would fail with EXDEV", "put both directories on one APFS volume")
    clones, err = _try(lambda: probes.can_clone(runners_dir))
    if not clones:
        return Check("clone-volume", Level.FATAL, f"{runners_dir} cannot make copy-on-write clones"
                     + (f" ({err})" if err else ""), "use an APFS volume for templates and runners")
    return Check("clone-volume", Level.OK, "templates and runners share one clone-capable volume")


def _lease_check(probes: Probes) -> Check:
    seconds, err = _try(probes.lease_seconds)
    fix = ("sudo defaults write /Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default"
           f".plist bootpd -dict DHCPLeaseTimeSecs -int {MAX_LEASE_SECONDS}")
    if err is not None or not isinstance(seconds, int):
        return Check("dhcp-lease-time", Level.WARN, f"could not read the bootpd lease time ({err})", fix)
    if seconds > MAX_LEASE_SECONDS:
        return Check("dhcp-lease-time", Level.WARN, f"bootpd leases last {seconds}s: about 253 runners "
                     "per lease period exhaust 192.168.64.0/24", fix)
    return Check("dhcp-lease-time", Level.OK, f"bootpd lease time {seconds}s")


def _local_network_check(probes: Probes) -> Check:
    ranges, err = _try(probes.local_network_ranges)
    covered = False
    for r in ranges if isinstance(ranges, list) else []:
        try:
            covered = covered or NAT_NETWORK.subnet_of(ipaddress.ip_network(r, strict=False))  # type: ignore[arg-type]
        except ValueError:
            continue
    if covered:
        return Check("local-network", Level.OK, f"{NAT_NETWORK} is exempt from the Local Network prompt")
    return Check("local-network", Level.WARN, f"{NAT_NETWORK} is not exempt from the Local Network privacy "
                 "prompt; SSH from the agent to guests may be blocked" + (f" ({err})" if err else ""),
                 "sudo defaults write com.apple.network.local-network AllowedEthernetLocalNetworkAddresses "
                 "-array 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16  (then reboot)")


def has_fatal(checks: list[Check]) -> bool:
    return any(c.level is Level.FATAL for c in checks)


__all__ = ["Check", "Level", "Probes", "has_fatal", "run_checks"]
