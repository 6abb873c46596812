"""Per-runner identity: a fresh MAC unique among live runners, and a fresh MachineIdentifier."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from pathlib import Path

from shoes_vz.core.errors import BundleError
from shoes_vz.vm.leases import MACAddress


def new_mac(live: Collection[MACAddress]) -> MACAddress:
    """A random locally administered unicast MAC that no live runner uses."""
    for _ in range(64):
        mac = MACAddress.random_local()
        if mac not in live:
            return mac
    raise BundleError("could not find a MAC address unused by live runners")  # 2^46 space: never


def write_machine_identifier(path: Path) -> None:
    """A new MachineIdentifier for the bundle (the vz driver's format when it is available)."""
    try:
        from shoes_vz.vm.identity_files import new_machine_identifier_file
    except ImportError:
        path.write_text(json.dumps({"ecid": secrets.randbits(64)}) + "\n")
        return
    new_machine_identifier_file(path)
