"""dnsmasq's `--dhcp-script` for the namespaced sim: bootpd's lease file is the lease database.

dnsmasq runs with `--leasefile-ro`, so it keeps no database of its own: at start it asks this script
(`init`) for the leases — read from the agent's `dhcpd_leases` — and then calls it for every change
(`add`, `old`, `del` MAC IP [HOSTNAME], expiry and client id in the environment). Each change is
written in bootpd's format (`shoes_vz.vm.leases`: unpadded MAC octets, `1,<mac>` identifiers,
hex expiry, newest first, atomic replace), so the file the agent reads is the one the DHCP server
keeps — as on a Mac, where bootpd owns `/var/db/dhcpd_leases`.

    python -m shoes_vz.vm.drivers.sim_dhcp LEASE_FILE ACTION [MAC IP [HOSTNAME]]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shoes_vz.vm.leases import ETHERNET, Lease, MACAddress, add_lease, read_leases, remove_leases_for


def bootpd_identifier(client_id: str) -> str | None:
    """dnsmasq's `01:02:00:0a:0b:0c` client id → bootpd's `1,2:0:a:b:c` (type, then unpadded octets)."""
    parts = [p for p in client_id.strip().split(":") if p]
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        return None
    if len(octets) < 2:
        return None
    return f"{octets[0]:x}," + ":".join(f"{b:x}" for b in octets[1:])


def dnsmasq_client_id(identifier: str | None) -> str:
    """bootpd's `1,2:0:a:b:c` → dnsmasq's `01:02:00:0a:0b:0c`; `*` when there is none."""
    if not identifier or "," not in identifier:
        return "*"
    kind, _, rest = identifier.partition(",")
    try:
        octets = [int(kind, 16), *(int(p, 16) for p in rest.split(":") if p)]
    except ValueError:
        return "*"
    return ":".join(f"{b:02x}" for b in octets)


def expiry_from(env: Mapping[str, str], now: datetime) -> datetime:
    """The lease's end: DNSMASQ_LEASE_EXPIRES (absolute), else DNSMASQ_LEASE_LENGTH / TIME_REMAINING."""
    if env.get("DNSMASQ_LEASE_EXPIRES", "").isdigit():
        return datetime.fromtimestamp(int(env["DNSMASQ_LEASE_EXPIRES"]), UTC)
    for key in ("DNSMASQ_LEASE_LENGTH", "DNSMASQ_TIME_REMAINING"):
        if env.get(key, "").isdigit():
            return now + timedelta(seconds=int(env[key]))
    return now + timedelta(seconds=600)


def init_lines(leases: list[Lease], now: datetime) -> list[str]:
    """The live leases in dnsmasq's lease-file format: `EXPIRY MAC IP HOSTNAME CLIENT-ID`."""
    out = []
    for le in leases:
        if le.mac is None or le.expired(now):
            continue
        out.append(f"{int(le.expiry.timestamp())} {le.mac} {le.ip} {le.name or '*'} "
                   f"{dnsmasq_client_id(le.identifier)}")
    return out


def handle(lease_file: Path, argv: list[str], env: Mapping[str, str], now: datetime | None = None) -> list[str]:
    """Carry out one dnsmasq call; returns what goes to stdout (only `init` prints)."""
    now = now or datetime.now(UTC)
    action = argv[0] if argv else ""
    if action == "init":
        return init_lines(read_leases(lease_file), now)
    if action not in ("add", "old", "del") or len(argv) < 3:
        return []  # arp-*, tftp, relay-snoop and future actions: not ours
    raw_mac, ip = argv[1], argv[2]
    if "-" in raw_mac:  # "06-01:23:..." is another hardware type: not a VM's Ethernet MAC
        return []
    mac = MACAddress.parse(raw_mac)
    if action == "del":
        remove_leases_for(lease_file, mac)
        return []
    name = argv[3] if len(argv) > 3 and argv[3] not in ("", "*") else env.get("DNSMASQ_SUPPLIED_HOSTNAME") or None
    ident = bootpd_identifier(env.get("DNSMASQ_CLIENT_ID", "")) or f"{ETHERNET},{mac.unpadded()}"
    add_lease(lease_file, Lease(ip=ip, mac=mac, expiry=expiry_from(env, now), name=name, identifier=ident))
    return []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write("usage: sim_dhcp LEASE_FILE ACTION [MAC IP [HOSTNAME]]\n")
        return 2
    try:
        for line in handle(Path(args[0]), args[1:], os.environ):
            sys.stdout.write(line + "\n")
    except (OSError, ValueError) as e:
        sys.stderr.write(f"shoes-vz lease script: {e}\n")  # dnsmasq logs our stderr
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
