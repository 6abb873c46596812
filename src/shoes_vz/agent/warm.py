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
from collections.abc import Iterable, Iterator
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


def read_slots(templates_dir: Path, name: str, version: str, warned: set[str] | None = None) -> list[WarmSlot]:
    """Every readable slot of one template version. Unreadable ones are skipped and logged — once
    per problem when the caller keeps `warned` (the agent re-reads slots with every Sync)."""
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
            problem = f"ignoring warm slot {p}: {e} (`shoes-vz template warm {name} --slots N` replaces it)"
            if warned is None or problem not in warned:
                log.warning("%s", problem)
            if warned is not None:
                warned.add(problem)
    return found


def fitting_slots(templates_dir: Path, template: Template, driver: str,
                  warned: set[str] | None = None) -> list[WarmSlot]:
    """The slots made from exactly this template version for `driver` (reads the disk)."""
    return [s for s in read_slots(templates_dir, template.meta.name, template.meta.version, warned)
            if s.fits(template, driver)]


def slot_macs(templates_dir: Path) -> set[MACAddress]:
    """Every slot's MAC, of every template and version (reads the disk)."""
    found = set()
    for slot_json in (templates_dir / ".warm").glob(f"*/*/{SLOT_PREFIX}*/{SLOT_FILE}"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            found.add(WarmSlot.read(slot_json.parent).mac)
    return found


class WarmPool:
    """This host's warm slots and which live runner holds which (a slot serves one at a time).

    The slots on disk are read by `refresh` — off the event loop, at agent start and with every
    Sync message — so `claim`, `counts` and `macs` on the create path touch no files. A slot made
    by `template warm` is used from the next Sync on; one removed since the last look makes its
    runner boot cold (`vm_files.fill_from_slot`).
    """

    def __init__(self, templates_dir: Path, driver: str) -> None:
        self.templates_dir = templates_dir
        self.driver = driver
        self._claims: dict[Path, str] = {}   # slot path → runner id
        self._slots: dict[tuple[str, str], list[WarmSlot]] = {}  # (template, version) → fitting slots
        self._macs: set[MACAddress] = set()
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self, templates: Iterable[Template]) -> None:
        """Re-read the slots of `templates` (blocking: call it off the event loop)."""
        found = {(t.meta.name, t.meta.version): fitting_slots(self.templates_dir, t, self.driver, self._warned)
                 for t in templates}
        macs = slot_macs(self.templates_dir)
        with self._lock:
            self._slots, self._macs = found, macs

    def _fitting(self, template: Template) -> list[WarmSlot]:
        return self._slots.get((template.meta.name, template.meta.version), [])

    def claim(self, template: Template, runner_id: str) -> WarmSlot | None:
        """A free slot for `template`, now held by `runner_id`; None when every slot is taken."""
        with self._lock:
            for slot in self._fitting(template):
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
        with self._lock:
            slots = self._fitting(template)
            return len(slots), sum(1 for s in slots if s.path not in self._claims)

    def macs(self) -> set[MACAddress]:
        """Every slot's MAC: a cold runner must not take one (its slot could be restored meanwhile)."""
        with self._lock:
            return set(self._macs)
