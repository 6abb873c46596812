"""Warm slots (DESIGN §12): saved VMs a runner restores from instead of booting cold.

A slot is a bundle made in the maintenance path (`shoes-vz template warm`, see `warm_build`) with
its own fixed identity — MachineIdentifier, MAC — and a `State.save`, stored read-only next to the
template in `<templates_dir>/.warm/<template>/<version>/slot-<id>/`. A runner clones a slot's files
and restores; the pool hands a slot to one live runner at a time, so no identity is ever live
twice. A slot belongs to one template version and its digests: after `template freeze` publishes a
new version, old slots are stale and never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoes_vz.template import Template
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.leases import MACAddress

log = logging.getLogger(__name__)
SLOT_FILE = "slot.json"
SLOT_PREFIX = "slot-"


def slots_dir(templates_dir: Path, name: str, version: str) -> Path:
    return templates_dir / ".warm" / name / version


@dataclass(frozen=True)
class WarmSlot:
    path: Path
    template: str
    version: str
    template_digests: dict[str, str]
    mac: MACAddress
    ip: str
    driver: str
    created_at: float

    @property
    def bundle(self) -> Bundle:
        """The slot's files have a bundle's names (Disk.img, AuxiliaryStorage, State.save, …)."""
        return Bundle(self.path)

    @classmethod
    def read(cls, path: Path) -> WarmSlot:
        raw = json.loads((path / SLOT_FILE).read_text())
        return cls(path, str(raw["template"]), str(raw["version"]), dict(raw["template_digests"]),
                   MACAddress.parse(str(raw["mac_address"])), str(raw.get("ip_address", "")),
                   str(raw.get("driver", "")), float(raw.get("created_at", 0.0)))

    def to_json(self) -> dict[str, Any]:
        return {"template": self.template, "version": self.version, "template_digests": self.template_digests,
                "mac_address": str(self.mac), "ip_address": self.ip, "driver": self.driver,
                "created_at": self.created_at}

    def fits(self, template: Template, driver: str) -> bool:
        """Made from exactly this template version, for this driver, with its state still there."""
        m = template.meta
        return (self.template == m.name and self.version == m.version and self.template_digests == m.digests
                and self.driver == driver and self.bundle.saved_state.is_file())

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """A shared lock while a runner clones the slot; `template warm` never removes a locked slot."""
        fd = os.open(self.path / SLOT_FILE, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)


def read_slots(templates_dir: Path, name: str, version: str) -> list[WarmSlot]:
    """Every readable slot of one template version (unreadable ones are logged and skipped)."""
    root = slots_dir(templates_dir, name, version)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if not p.name.startswith(SLOT_PREFIX):
            continue
        try:
            found.append(WarmSlot.read(p))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring warm slot %s: %s", p, e)
    return found


class WarmPool:
    """This host's warm slots and which live runner holds which (a slot serves one at a time)."""

    def __init__(self, templates_dir: Path, driver: str) -> None:
        self.templates_dir = templates_dir
        self.driver = driver
        self._claims: dict[Path, str] = {}   # slot path → runner id
        self._lock = threading.Lock()

    def slots(self, template: Template) -> list[WarmSlot]:
        return [s for s in read_slots(self.templates_dir, template.meta.name, template.meta.version)
                if s.fits(template, self.driver)]

    def claim(self, template: Template, runner_id: str) -> WarmSlot | None:
        """A free slot for `template`, now held by `runner_id`; None when every slot is taken."""
        with self._lock:
            for slot in self.slots(template):
                if slot.path not in self._claims:
                    self._claims[slot.path] = runner_id
                    return slot
        return None

    def adopt(self, slot_path: Path, runner_id: str) -> None:
        """A re-adopted runner (agent restart) still holds the slot it was cloned from."""
        with self._lock:
            self._claims[slot_path] = runner_id

    def release(self, runner_id: str) -> None:
        with self._lock:
            for path in [p for p, rid in self._claims.items() if rid == runner_id]:
                del self._claims[path]

    def counts(self, template: Template) -> tuple[int, int]:
        """(warm slots, free warm slots) for `template`."""
        slots = self.slots(template)
        with self._lock:
            free = sum(1 for s in slots if s.path not in self._claims)
        return len(slots), free

    def macs(self) -> set[MACAddress]:
        """Every slot's MAC: a cold runner must not take one (its slot could be restored meanwhile)."""
        root = self.templates_dir / ".warm"
        if not root.is_dir():
            return set()
        found = set()
        for slot_json in root.glob(f"*/*/{SLOT_PREFIX}*/{SLOT_FILE}"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found.add(WarmSlot.read(slot_json.parent).mac)
        return found
