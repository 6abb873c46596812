"""HardwareModel.json and MachineIdentifier.json: the persisted identity of a macOS VM.

Both hold one opaque `NSData` blob that Virtualization.framework hands out and takes back
(`VZMacHardwareModel.dataRepresentation()` / `VZMacMachineIdentifier.dataRepresentation()`, reloaded
with `initWithDataRepresentation_`; reference §2.2, rule 9). Format, one JSON object each:

    HardwareModel.json      {"dataRepresentation": "<base64>"}
    MachineIdentifier.json  {"dataRepresentation": "<base64>"}                      bound
                            {"dataRepresentation": null, "generate": "on-first-start"}  placeholder

Why a placeholder: the reference documents the machine identifier's data representation only as
opaque (§2.2 "persist it"); it shows no route from an ECID integer to a `VZMacMachineIdentifier`.
So the agent (which may run where PyObjC cannot) writes a placeholder per runner with
`new_machine_identifier_file`, and the vz driver mints a fresh `VZMacMachineIdentifier` on first start
and binds the file to it (`write_data_representation`). A legacy `{"ecid": <int>}` file is read as
a placeholder too; its integer is never used. This module does not import PyObjC.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from shoes_vz.core.errors import BundleError
from shoes_vz.vm.bundle import write_json_atomic

KEY = "dataRepresentation"
PLACEHOLDER = {KEY: None, "generate": "on-first-start"}


def write_data_representation(path: Path, data: bytes) -> None:
    """Bind `path` to an identity blob (atomic replace)."""
    if not data:
        raise BundleError(f"{path}: refusing to write an empty data representation")
    write_json_atomic(path, {KEY: base64.b64encode(bytes(data)).decode("ascii")})


def new_machine_identifier_file(path: Path) -> None:
    """A per-runner MachineIdentifier.json: a placeholder the vz driver binds on first start."""
    write_json_atomic(path, dict(PLACEHOLDER), durable=False)  # a bundle is garbage after a host crash anyway


def read_data_representation(path: Path) -> bytes | None:
    """The identity blob, or None for a placeholder. BundleError when missing or malformed."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable identity file: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    value = raw.get(KEY)
    if value is None:
        if raw.get("generate") == "on-first-start" or "ecid" in raw:
            return None
        raise BundleError(f"{path}: no {KEY!r} and not a placeholder")
    if not isinstance(value, str) or not value:
        raise BundleError(f"{path}: {KEY!r} must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BundleError(f"{path}: {KEY!r} is not valid base64: {e}") from e


def is_placeholder(path: Path) -> bool:
    return read_data_representation(path) is None


__all__ = ["is_placeholder", "new_machine_identifier_file", "read_data_representation",
           "write_data_representation"]
