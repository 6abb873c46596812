"""The sim driver's `State.save`: what a saved simulated guest must find unchanged to be restored.

VZ restores a saved state only into the same configuration (hardware model, MachineIdentifier, aux
storage, MAC) with the disk exactly as it was at save time (DESIGN §12). The sim keeps the same
rules so the warm path — slots, clones of their files, the fall back to a cold boot — is tested
for real: the state file records digests of those parts and a restore checks every one of them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from shoes_vz.vm.bundle import Bundle, write_json_atomic
from shoes_vz.vm.digest import file_digest, sha256_file
from shoes_vz.vm.leases import MACAddress

FORMAT = "shoes-vz-sim-state/1"


class RestoreRefused(Exception):
    """The saved state does not fit this bundle; the driver cold-boots instead."""


def _fingerprint(bundle: Bundle) -> dict[str, str]:
    """The configuration a state belongs to, as digests (the disk's is sparse-aware)."""
    try:
        return {
            "hardware_model": sha256_file(bundle.hardware_model),
            "machine_identifier": sha256_file(bundle.machine_identifier),
            "aux_storage": file_digest(bundle.aux_storage),
            "disk": file_digest(bundle.disk),
        }
    except FileNotFoundError as e:
        raise RestoreRefused(f"{e.filename} is missing") from None


def save(bundle: Bundle, mac: MACAddress, ip: str) -> None:
    write_json_atomic(bundle.saved_state, {
        "format": FORMAT, "mac_address": str(mac), "ip_address": ip, "saved_at": time.time(),
        **_fingerprint(bundle),
    }, mode=0o600)


def load(bundle: Bundle, mac: MACAddress) -> dict[str, Any]:
    """The saved state if it restores into this bundle with this MAC; RestoreRefused says why not."""
    try:
        state = json.loads(bundle.saved_state.read_bytes())
    except (OSError, ValueError) as e:
        raise RestoreRefused(f"unreadable State.save: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RestoreRefused("State.save is not a sim saved state")
    if state.get("mac_address") != str(mac):
        raise RestoreRefused(f"State.save belongs to MAC {state.get('mac_address')}, this VM has {mac}")
    now = _fingerprint(bundle)
    changed = [k for k, v in now.items() if state.get(k) != v]
    if changed:
        raise RestoreRefused(f"the configuration changed since the save: {', '.join(changed)}")
    return state
