"""Making warm slots: `shoes-vz template warm NAME --slots N` (the maintenance path of DESIGN §12).

Each new slot: clone the template with a fresh identity, boot it with the host's driver (marked as
a VM to be saved, so the vz driver checks save/restore support before it boots), wait for SSH
(pinned host key) and the runner-agent, then save the VM's state (pause → save → stop) and freeze
the result read-only. The build's VM takes one host VM slot like any other, so with every slot held
(e.g. by runners) it stops at once with a capacity error. Slots of older template versions, broken
slots and slots beyond N are removed — except while a live runner was cloned from one (its identity
is live).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from shoes_vz.agent import supervisor
from shoes_vz.agent.scratch import SCRATCH_SUFFIX, ScratchError, ScratchVM, login, scratch_leftovers, scratch_vm
from shoes_vz.agent.warm import SLOT_FILE, SLOT_PREFIX, WarmSlot, fitting_slots, slots_dir
from shoes_vz.config import AgentSettings
from shoes_vz.core.errors import ConfigError
from shoes_vz.template import Template
from shoes_vz.template.modes import make_read_only, move_dir, remove_tree
from shoes_vz.vm import control
from shoes_vz.vm.bundle import Bundle, write_json_atomic

SAVE_TIMEOUT = 120.0
RUNTIME_LEFTOVERS = ("control.sock", "vm.lock", ".metadata.lock", "RuntimeMetadata.json")


class WarmError(ScratchError):
    """A slot could not be made; nothing of it is left behind."""


@dataclass
class WarmReport:
    kept: list[WarmSlot] = field(default_factory=list)
    built: list[WarmSlot] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)   # stale or extra, but a live runner holds it


def slots_in_use(runners_dir: Path) -> set[Path]:
    """Slots a live runner on this host was cloned from."""
    return {Path(str(meta["warm_slot"])) for _, meta in Bundle.live_in(runners_dir)
            if meta is not None and meta.get("warm_slot")}


def _remove_slot(path: Path) -> bool:
    """Remove a slot unless a runner is cloning it right now (it holds a shared lock on slot.json)."""
    lock = path / SLOT_FILE
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC) if lock.exists() else None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
        remove_tree(path)
        return True
    finally:
        if fd is not None:
            os.close(fd)


class SlotBuilder:
    """Makes one template's warm slots with the host's agent settings."""

    def __init__(self, settings: AgentSettings, template: Template, on_event: Callable[[str], None]) -> None:
        self.settings = settings
        self.template = template
        self.on_event = on_event
        self.root = slots_dir(settings.templates_dir, template.meta.name, template.meta.version)

    async def ensure(self, count: int) -> WarmReport:
        """Exactly `count` usable slots for the template's current version (when none is busy)."""
        s, t = self.settings, self.template
        if not 0 <= count <= s.max_runners:
            raise ConfigError(f"--slots must be between 0 and the agent's max_runners ({s.max_runners}): "
                              "a slot serves one live runner, more can never be used at once")
        await asyncio.to_thread(t.check)
        report = WarmReport()
        in_use = await asyncio.to_thread(slots_in_use, s.runners_dir)
        usable = await asyncio.to_thread(fitting_slots, s.templates_dir, t, s.driver)
        report.kept = usable[:count]
        keep = {slot.path for slot in report.kept}
        for path in await asyncio.to_thread(self._all_slot_paths):
            if path in keep:
                continue
            if path in in_use or not await asyncio.to_thread(_remove_slot, path):
                report.busy.append(path)
                continue
            report.removed.append(path)
            self.on_event(f"removed {path}")
        missing = count - len(report.kept)
        for i in range(missing):
            self.on_event(f"slot {i + 1} of {missing}: building")
            try:
                report.built.append(await self.build_one())
            except ScratchError as e:
                raise WarmError(f"warm slot {i + 1} of {missing} for {t.name} v{t.meta.version}: {e}") from e
        return report

    def _all_slot_paths(self) -> list[Path]:
        """Every slot of every version of this template, and leftovers of interrupted builds."""
        base = self.settings.templates_dir / ".warm" / self.template.meta.name
        found = sorted(base.glob(f"*/{SLOT_PREFIX}*")) if base.is_dir() else []
        return found + scratch_leftovers(self.settings.runners_dir)

    async def build_one(self) -> WarmSlot:
        s, t = self.settings, self.template
        self.root.mkdir(parents=True, exist_ok=True)
        async with scratch_vm(s, t, "warm", saveable=True) as vm:
            await self._ready(vm)
            self.on_event(f"  {vm.ip}: runner channel, SSH and runner-agent ready; saving the VM state")
            reply = await control.request(vm.bundle.control_socket, "save", timeout=SAVE_TIMEOUT)
            if "error" in reply:
                raise WarmError(f"the VM could not save its state: {reply['error']}")
            if not await supervisor.wait_gone(vm.bundle, vm.proc, s.stop_grace + 10.0):
                raise WarmError("the VM did not stop after saving its state")
            if not vm.bundle.saved_state.is_file():
                raise WarmError(f"the VM stopped but wrote no {vm.bundle.saved_state.name}")
            slot_id = vm.bundle.path.name.removesuffix(SCRATCH_SUFFIX).removeprefix("warm-")
            slot = WarmSlot(self.root / f"{SLOT_PREFIX}{slot_id}", t.meta.name, t.meta.version,
                            dict(t.meta.digests), vm.mac, vm.ip, s.driver, time.time())
            await asyncio.to_thread(self._finish, vm.bundle, slot)
            self.on_event(f"  saved {slot.path}")
            return slot

    async def _ready(self, vm: ScratchVM) -> None:
        """The runner channel, SSH with a certificate pinned to the host key it named, then the
        runner-agent's HTTP: what a runner restored from this slot will need at once."""
        ident, conn = await login(self.settings, vm, self.template)
        conn.close()
        await self._runner_agent_ready(ident.ip, time.monotonic() + self.settings.ip_to_ssh_timeout)

    async def _runner_agent_ready(self, ip: str, deadline: float) -> None:
        url = f"http://{ip}:{self.settings.runner_agent_port}/health"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise WarmError(f"the runner-agent did not answer at {url}: is it installed in the template?")
                await asyncio.sleep(0.05)

    @staticmethod
    def _finish(tmp: Bundle, slot: WarmSlot) -> None:
        """Keep only what a runner clones; freeze it read-only; publish it under its final name."""
        for name in RUNTIME_LEFTOVERS:
            with contextlib.suppress(FileNotFoundError):
                (tmp.path / name).unlink()
        shutil.rmtree(tmp.guest_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.log_file.rename(tmp.path / "build.log")
        write_json_atomic(tmp.path / SLOT_FILE, slot.to_json())
        make_read_only(tmp.path)  # as a template: 0444/0555, Disk.img and State.save 0400, uchg on macOS
        try:
            move_dir(tmp.path, slot.path)
        except OSError as e:
            raise WarmError(f"cannot move the slot into {slot.path.parent}: {e} (templates and runners must "
                            "be on one volume)") from e
