"""macOS bootpd's `/var/db/dhcpd_leases`: reader, MAC matching and (for the sim driver) a writer.

Format (bootpd `PLCache_write`, see reference §7.2): per lease a line `{`, one `\\tkey=value` line
per property (indented by ONE TAB; shown with spaces below), a line `}`; most recent lease first;
the file is replaced atomically by rename.

    {
        name=debian
        ip_address=192.168.64.2
        hw_address=1,a:1b:3:4c:5d:6e
        identifier=1,a:1b:3:4c:5d:6e
        lease=0x6565da9e
    }

MAC octets are written WITHOUT leading zeros, so MACs are compared as bytes, never as text.
`lease` is the absolute expiry in Unix seconds, hex. `hw_address=ff,...` is a DUID client
identifier, not a MAC: such a lease cannot be mapped to a VM and has `mac=None`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ETHERNET = "1"  # ARPHRD_ETHER, the hardware type bootpd writes before a MAC


@dataclass(frozen=True, order=True)
class MACAddress:
    """Six bytes. Parses bootpd's unpadded octets; prints the usual `%02x:` form."""

    octets: bytes

    def __post_init__(self) -> None:
        if len(self.octets) != 6:
            raise ValueError(f"a MAC address has 6 octets, got {len(self.octets)}")

    @classmethod
    def parse(cls, text: str) -> MACAddress:
        parts = text.strip().split(":")
        if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError(f"not a MAC address: {text!r}")
        try:
            return cls(bytes(int(p, 16) for p in parts))
        except ValueError:
            raise ValueError(f"not a MAC address: {text!r}") from None

    @classmethod
    def random_local(cls) -> MACAddress:
        """A random locally administered (bit 0x02 set) unicast (bit 0x01 clear) address."""
        raw = bytearray(secrets.token_bytes(6))
        raw[0] = (raw[0] | 0x02) & 0xFE
        return cls(bytes(raw))

    def unpadded(self) -> str:
        """bootpd's spelling: `a:1b:3:4c:5d:6e`."""
        return ":".join(f"{b:x}" for b in self.octets)

    def __str__(self) -> str:
        return ":".join(f"{b:02x}" for b in self.octets)


@dataclass(frozen=True)
class Lease:
    ip: str
    mac: MACAddress | None
    expiry: datetime  # timezone-aware (UTC)
    name: str | None = None
    identifier: str | None = None  # raw `<type>,<hex>` as in the file
    hw_address: str | None = None  # raw value when not an Ethernet MAC (e.g. `ff,...`), kept for rewrites

    def expired(self, now: datetime | None = None) -> bool:
        return self.expiry <= (now or datetime.now(UTC))


def _parse_block(props: dict[str, str | None], start: int) -> Lease:
    def need(key: str) -> str:
        value = props.get(key)
        if not value:
            raise ValueError(f"dhcpd_leases: lease block starting at line {start} has no {key}=")
        return value

    ip = need("ip_address")
    raw_expiry = need("lease")
    try:
        expiry = datetime.fromtimestamp(int(raw_expiry, 16), UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"dhcpd_leases: lease block starting at line {start}: bad lease={raw_expiry!r} (expected hex)"
        ) from None
    mac: MACAddress | None = None
    hw_raw = props.get("hw_address")
    if hw_raw:
        hw_type, sep, addr = hw_raw.partition(",")
        if not sep:
            raise ValueError(f"dhcpd_leases: lease block starting at line {start}: bad hw_address={hw_raw!r}")
        if hw_type == ETHERNET:
            try:
                mac = MACAddress.parse(addr)
            except ValueError as e:
                raise ValueError(f"dhcpd_leases: lease block starting at line {start}: {e}") from None
    return Lease(
        ip=ip,
        mac=mac,
        expiry=expiry,
        name=props.get("name"),
        identifier=props.get("identifier"),
        hw_address=None if mac is not None else hw_raw,
    )


def parse_leases(text: str) -> list[Lease]:
    """All leases in file order (most recent first, as bootpd writes them). ValueError names the line."""
    leases: list[Lease] = []
    props: dict[str, str | None] | None = None
    start = 0
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip(" \t")
        if not line:
            continue
        if line == "{":
            if props is not None:
                raise ValueError(f"dhcpd_leases line {n}: '{{' inside the block opened at line {start}")
            props, start = {}, n
        elif line == "}":
            if props is None:
                raise ValueError(f"dhcpd_leases line {n}: '}}' without an open block")
            leases.append(_parse_block(props, start))
            props = None
        else:
            if props is None:
                raise ValueError(f"dhcpd_leases line {n}: {line!r} outside a lease block")
            key, sep, value = line.partition("=")
            if not key:
                raise ValueError(f"dhcpd_leases line {n}: {line!r} has no key")
            props[key] = value if sep else None
    if props is not None:
        raise ValueError(f"dhcpd_leases: lease block opened at line {start} is never closed")
    return leases


def read_leases(path: Path | str) -> list[Lease]:
    """The leases in `path`; a missing file means no leases (bootpd recreates it on demand)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    try:
        return parse_leases(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def newest_lease_for(
    leases: Iterable[Lease], mac: MACAddress | str, now: datetime | None = None
) -> Lease | None:
    """The unexpired lease for `mac` with the latest expiry, or None."""
    want = mac if isinstance(mac, MACAddress) else MACAddress.parse(mac)
    now = now or datetime.now(UTC)
    candidates = [le for le in leases if le.mac == want and le.expiry > now]
    return max(candidates, key=lambda le: le.expiry, default=None)


def no_lease_reason(path: Path | str, mac: MACAddress, now: datetime | None = None) -> str:
    """Why a guest may have no address, from the lease file alone (true on a Mac as in the sim)."""
    now = now or datetime.now(UTC)
    try:
        leases = read_leases(path)
    except ValueError as e:
        return f"the lease file is unreadable ({e})"
    live = [le for le in leases if not le.expired(now)]
    if any(le.mac == mac for le in live):
        return f"{path} has a lease for {mac}, but the guest never answered"
    return (f"no DHCP lease for {mac} in {path} ({len(live)} unexpired lease(s) held by other clients): "
            "the NAT pool may be spent, or the guest's DHCP client never ran")


# -- writer (the sim driver plays bootpd) ----------------------------------------------------------


def format_leases(leases: Iterable[Lease]) -> str:
    out: list[str] = []
    for le in leases:
        out.append("{")
        if le.name:
            out.append(f"\tname={le.name}")
        out.append(f"\tip_address={le.ip}")
        hw = f"{ETHERNET},{le.mac.unpadded()}" if le.mac is not None else le.hw_address
        if hw:
            out.append(f"\thw_address={hw}")
        ident = le.identifier or (f"{ETHERNET},{le.mac.unpadded()}" if le.mac is not None else None)
        if ident:
            out.append(f"\tidentifier={ident}")
        out.append(f"\tlease=0x{int(le.expiry.timestamp()):x}")
        out.append("}")
    return "".join(line + "\n" for line in out)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A sidecar lock, because the lease file itself is replaced by rename on every write.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_atomic(path: Path, leases: list[Lease]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(format_leases(leases))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def add_lease(path: Path | str, lease: Lease) -> None:
    """Record `lease` first in the file, replacing any lease for the same MAC or IP (as bootpd does)."""
    path = Path(path)
    with _locked(path):
        kept = [
            le for le in read_leases(path)
            if le.ip != lease.ip and (lease.mac is None or le.mac != lease.mac)
        ]
        _write_atomic(path, [lease, *kept])


def remove_leases_for(path: Path | str, mac: MACAddress | str) -> int:
    """Drop every lease for `mac`; returns how many went. A missing file stays missing."""
    path = Path(path)
    want = mac if isinstance(mac, MACAddress) else MACAddress.parse(mac)
    with _locked(path):
        if not path.exists():
            return 0
        leases = read_leases(path)
        kept = [le for le in leases if le.mac != want]
        if len(kept) != len(leases):
            _write_atomic(path, kept)
        return len(leases) - len(kept)
