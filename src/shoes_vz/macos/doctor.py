"""`shoes-vz doctor`: can this host run vz VMs? Each check is ok, warn or fatal, and says its fix.

Fatal means the vz driver cannot work (the agent must not schedule VMs here); warn means it works
but something will hurt (slow DHCP reuse, prompts, an untested macOS). The probes are injectable so
the logic is tested anywhere; the real ones import PyObjC lazily and only on macOS.

The user checks follow the one supported launch shape (docs/macos-host.md): VMs run as a normal
user, logged in to the GUI (auto-login), with an unlocked login keychain. Root is fatal. The
keychain and GUI login checked are those of the user that runs VMs: this process's user, or — when
doctor runs as root under sudo — the invoking user (never root's own `/var/root`).
"""

from __future__ import annotations

import ipaddress
import os
import platform
import plistlib
import pwd
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from shoes_vz.macos.interpreter import ENTITLEMENT, SignRecord, entitlement_problem, lost_signature, record_path
from shoes_vz.macos.interpreter import this_image as interpreter_image
from shoes_vz.vm.drivers.vz_config import MIN_MACOS
from shoes_vz.vm.drivers.vz_errors import KEYCHAIN_INTERACTION_NOT_ALLOWED
from shoes_vz.vm.drivers.vz_host import ROOT_REASON, host_macos
from shoes_vz.vm.leases import Lease, read_leases

SEED_MACOS = (26, 0)      # what the project is built and tested for (MIN_MACOS: the driver's floor)
KEYCHAIN_MACOS = (15, 0)  # from 15 VZ needs an unlocked login keychain (reference §5.5)
MAX_LEASE_SECONDS = 600
NAT_NETWORK = ipaddress.ip_network("192.168.64.0/24")
NAT_POOL = NAT_NETWORK.num_addresses - 3  # bootpd hands out .2–.254 (.1 is the host)
LEASES_FULL = 0.8  # of the pool unexpired: new MACs may soon get no address
BOOTPD_LEASES = Path("/var/db/dhcpd_leases")
LEASE_PLIST = Path("/Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default.plist")
LOCAL_NETWORK_PLIST = Path("/Library/Preferences/com.apple.network.local-network.plist")
LOGIN_KEYCHAIN = Path("Library/Keychains/login.keychain-db")
HOST_DOC = "docs/macos-host.md"


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


@dataclass(frozen=True)
class HostUser:
    name: str
    uid: int
    home: Path

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> HostUser:
        return cls(entry.pw_name, entry.pw_uid, Path(entry.pw_dir))


def vm_user(euid: int, sudo_user: str | None) -> HostUser | None:
    """The user that runs VMs: this process's, or the invoking user's when root under sudo; else None."""
    try:
        if euid != 0:
            return HostUser.of(pwd.getpwuid(euid))
        if sudo_user and sudo_user != "root":
            return HostUser.of(pwd.getpwnam(sudo_user))
    except KeyError:
        pass
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass
class Probes:
    """Facts about the host. Each returns a value, or raises to mean "could not tell"."""

    system: Callable[[], str] = platform.system
    macos_version: Callable[[], tuple[int, int]] = host_macos  # the real one (cpython#135675)
    machine: Callable[[], str] = platform.machine
    translated: Callable[[], bool] = lambda: _sysctl("sysctl.proc_translated") == "1"
    euid: Callable[[], int] = os.geteuid
    vm_user: Callable[[], HostUser | None] = lambda: vm_user(os.geteuid(), os.environ.get("SUDO_USER"))
    console_uid: Callable[[], int] = lambda: os.stat("/dev/console").st_uid  # who is logged in to the GUI
    vz_supported: Callable[[], bool] = lambda: _vz().VZVirtualMachine.isSupported()
    entitlement_error: Callable[[], str | None] = entitlement_problem
    image: Callable[[], Path] = interpreter_image
    sign_record: Callable[[Path], SignRecord | None] = lambda home: SignRecord.read(record_path(home))
    device_of: Callable[[Path], int] = lambda p: os.stat(p).st_dev
    can_clone: Callable[[Path], bool] = lambda p: _can_clone(p)
    lease_seconds: Callable[[], int] = lambda: _lease_seconds()
    leases: Callable[[Path], list[Lease]] = read_leases  # bootpd's lease file, as the agent reads it
    keychain_problem: Callable[[Path], str | None] = lambda keychain: _keychain_problem(keychain)
    local_network_ranges: Callable[[], list[str]] = lambda: _local_network_ranges()


def _sysctl(name: str) -> str:
    return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, check=False).stdout.strip()


def _vz():  # type: ignore[no-untyped-def]
    import Virtualization  # type: ignore[import-not-found]

    return Virtualization


def _can_clone(directory: Path) -> bool:
    from shoes_vz.vm.clone import can_reflink

    return can_reflink(directory)


def _lease_seconds() -> int:
    try:
        data = plistlib.loads(LEASE_PLIST.read_bytes())
    except FileNotFoundError:
        return 86400  # bootpd's default (reference §7.1)
    return int(data.get("bootpd", {}).get("DHCPLeaseTimeSecs", 86400))


def _keychain_problem(keychain: Path) -> str | None:
    """None when `keychain` is unlocked, else what `security` says (-25308: locked, no GUI session)."""
    if not keychain.exists():
        return f"{keychain} does not exist"
    done = subprocess.run(["security", "show-keychain-info", str(keychain)], capture_output=True, text=True,
                          timeout=10, check=False)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip() or f"security show-keychain-info exited {done.returncode}"


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


def run_checks(probes: Probes, templates_dir: Path, runners_dir: Path, *, lease_file: Path = BOOTPD_LEASES,
               mac_recycling: bool = True) -> list[Check]:
    """Every check in order. Later checks that need macOS or PyObjC are skipped once one is fatal."""
    system = probes.system()
    if system != "Darwin":
        return [Check("platform", Level.FATAL, f"not macOS ({system}): the vz driver needs macOS on "
                      "Apple Silicon", "run the agent on a Mac, or use the sim driver (--driver sim) here")]
    out: list[Check] = [Check("platform", Level.OK, "macOS"), _user_check(probes)]
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
    user, _ = _try(probes.vm_user)
    out.append(_entitlement_check(probes, user if isinstance(user, HostUser) else None))
    out.append(_volume_check(probes, templates_dir, runners_dir))
    out.append(_lease_check(probes, mac_recycling))
    out.append(_lease_use_check(probes, lease_file, mac_recycling))
    if ver >= KEYCHAIN_MACOS:
        out += _session_checks(probes, user if isinstance(user, HostUser) else None)
        out.append(_local_network_check(probes))
    return out


def _user_check(probes: Probes) -> Check:
    euid = probes.euid()
    if euid == 0:
        return Check("user", Level.FATAL, f"running as root: {ROOT_REASON}",
                     f"run the agent and every shoes-vz command that starts a VM as the normal user that runs VMs, "
                     f"in its GUI session ({HOST_DOC}); check with `sudo -u <that user> -i shoes-vz doctor`")
    return Check("user", Level.OK, f"running as {_user_name(euid)} (not root)")


def _entitlement_check(probes: Probes, user: HostUser | None) -> Check:
    problem, err = _try(probes.entitlement_error)
    image, image_err = _try(probes.image)
    where = str(image) if isinstance(image, Path) else f"image unknown: {image_err}"
    if err is None and not problem:
        return Check("entitlement", Level.OK, f"{ENTITLEMENT} present on {where}")
    record, _ = _try(lambda: probes.sign_record(user.home) if user is not None else None)
    lost = lost_signature(image, record if isinstance(record, SignRecord) else None) \
        if isinstance(image, Path) else ""
    return Check("entitlement", Level.FATAL, f"{problem or err} ({where})" + (f"; {lost}" if lost else ""),
                 "shoes-vz sign-python")


def _session_checks(probes: Probes, user: HostUser | None) -> list[Check]:
    """The VM user's login keychain and GUI login (macOS 15+; tart#1067, #1075)."""
    if user is None:
        unknown = ("cannot tell which user runs VMs (root without sudo): its login keychain and GUI login are "
                   "unchecked")
        fix = f"run doctor as the user that runs the agent ({HOST_DOC})"
        return [Check("login-keychain", Level.WARN, unknown, fix), Check("gui-login", Level.WARN, unknown, fix)]
    keychain = user.home / LOGIN_KEYCHAIN
    problem, err = _try(lambda: probes.keychain_problem(keychain))
    if err is None and problem is None:
        checks = [Check("login-keychain", Level.OK, f"{user.name}'s login keychain is unlocked")]
    else:
        detail = str(err or problem)
        if str(KEYCHAIN_INTERACTION_NOT_ALLOWED) in detail or "interaction is not allowed" in detail.lower():
            detail += f" (errSecInteractionNotAllowed {KEYCHAIN_INTERACTION_NOT_ALLOWED}: locked, or no GUI session)"
        checks = [Check("login-keychain", Level.FATAL if err is None else Level.WARN,
                        f"{user.name}'s login keychain ({keychain}) is locked or missing: VM start fails on macOS "
                        f"15+ ({detail})",
                        f"log {user.name} in via the GUI (auto-login), or as {user.name}: `security unlock-keychain "
                        f"{keychain}` ({HOST_DOC})")]
    console, err = _try(probes.console_uid)
    if console == user.uid:
        checks.append(Check("gui-login", Level.OK, f"{user.name} is logged in to the GUI (owns the console)"))
    else:
        who = _user_name(console) if isinstance(console, int) else f"unknown: {err}"
        checks.append(Check("gui-login", Level.WARN,
                            f"{user.name} is not logged in to the GUI (the console belongs to {who}): macOS 15.2+ "
                            "guests need the VM's user logged in through the GUI (tart#1075)",
                            f"turn on automatic login for {user.name} (System Settings → Users & Groups → "
                            f"Automatically log in as; needs FileVault off) and reboot ({HOST_DOC})"))
    return checks


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


LEASE_TIME_FIX = ("sudo defaults write /Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default"
                  f".plist bootpd -dict DHCPLeaseTimeSecs -int {MAX_LEASE_SECONDS}")


def _lease_check(probes: Probes, mac_recycling: bool) -> Check:
    seconds, err = _try(probes.lease_seconds)
    if err is not None or not isinstance(seconds, int):
        return Check("dhcp-lease-time", Level.WARN, f"could not read the bootpd lease time ({err})", LEASE_TIME_FIX)
    if seconds > MAX_LEASE_SECONDS and not mac_recycling:
        return Check("dhcp-lease-time", Level.WARN, f"bootpd leases last {seconds}s and every runner takes a fresh "
                     f"MAC (agent.mac_recycling is off): {NAT_POOL} runners per {seconds}s "
                     f"({NAT_POOL * 3600 / seconds:.0f} an hour) spend {NAT_NETWORK}",
                     f"set agent.mac_recycling = true, or shorten the lease: {LEASE_TIME_FIX}")
    return Check("dhcp-lease-time", Level.OK, f"bootpd lease time {seconds}s"
                 + (" (runners recycle their MACs: the leases stay few)" if mac_recycling else ""))


def _lease_use_check(probes: Probes, lease_file: Path, mac_recycling: bool) -> Check:
    """How much of bootpd's pool unexpired leases hold now."""
    leases, err = _try(lambda: probes.leases(lease_file))
    if err is not None or not isinstance(leases, list):
        return Check("dhcp-leases", Level.WARN, f"could not read {lease_file} ({err})",
                     "check agent.lease_file (bootpd's: /var/db/dhcpd_leases)")
    now = datetime.now(UTC)
    held = [le for le in leases if not le.expired(now) and _in_nat(le.ip)]
    use = f"{len(held)} of bootpd's {NAT_POOL} addresses held by unexpired leases ({lease_file})"
    if len(held) >= LEASES_FULL * NAT_POOL:
        soonest = min(le.expiry for le in held)
        return Check("dhcp-leases", Level.WARN, f"{use}: new MACs may soon get no address (the first lease "
                     f"expires {soonest:%Y-%m-%d %H:%M} UTC)",
                     ("" if mac_recycling else "set agent.mac_recycling = true; ") + "stop whatever else makes "
                     f"new MACs on this host (other VM tools); leases expire by themselves; {LEASE_TIME_FIX}")
    return Check("dhcp-leases", Level.OK, use)


def _in_nat(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in NAT_NETWORK
    except ValueError:
        return False


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
