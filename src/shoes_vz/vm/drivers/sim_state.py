"""The sim driver's `State.save`: what a saved simulated guest must find unchanged to be restored.

VZ restores a saved state only into the same configuration (hardware model, MachineIdentifier, aux
storage, MAC) with the disk exactly as it was at save time (DESIGN §12). The sim keeps the same
rules so the warm path — slots, clones of their files, the fall back to a cold boot — is tested
for real: the state file records digests of those parts and a restore checks every one of them.

A VZ save holds the guest's memory; a sim guest's processes cannot be saved, so what its runner-agent
holds for this boot (its /exec token, per-boot SSH host key, trusted CA and principals:
`Bundle.guest_state_dir`) goes into the state file instead, and the restored runner-agent resumes
it. The file is written 0600 (a slot freezes it 0400): like VZ's, it holds the guest's secrets.
"""

from __future__ import annotations

import base64
import json
import os
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
        "guest_state": _guest_state(bundle), **_fingerprint(bundle),
    }, mode=0o600)


def _guest_state(bundle: Bundle) -> dict[str, str]:
    """The runner-agent's per-boot files (what a VZ save would hold in the guest's memory and disk)."""
    found: dict[str, str] = {}
    d = bundle.guest_state_dir
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.is_file() and not p.is_symlink() and ".tmp." not in p.name and ".new." not in p.name:
                found[p.name] = base64.b64encode(p.read_bytes()).decode()
    return found


def restore_guest_state(bundle: Bundle, state: dict[str, Any], uid: int | None) -> bool:
    """Put a saved guest's runner-agent files back (owned by the guest's `uid`); True if there were any.
    Its state.json learns when the VM was saved: the guest's clock stood still from then on."""
    files = state.get("guest_state") or {}
    if not isinstance(files, dict) or "state.json" not in files:
        return False
    d = bundle.guest_state_dir
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            continue
        raw = base64.b64decode(str(data))
        if name == "state.json":
            saved = json.loads(raw)
            saved["frozen_at"] = float(state.get("saved_at", time.time()))
            raw = json.dumps(saved).encode()
        path = d / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(path, 0o644 if name.endswith(".pub") or name == "principals" else 0o600)  # as it wrote them
        if uid is not None:
            os.chown(path, uid, uid)
    return True


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
