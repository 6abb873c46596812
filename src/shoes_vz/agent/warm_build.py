"""Making warm slots: `shoes-vz template warm NAME --slots N` (the maintenance path of DESIGN §12).

Each new slot: clone the template with a fresh identity, boot it with the host's driver, wait for
SSH (pinned host key) and the runner-agent, then save the VM's state (pause → save → stop) and
freeze the result read-only. Slots of older template versions, broken slots and slots beyond N are
removed — except while a live runner was cloned from one (its identity is live).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncssh

from shoes_vz.agent import ssh, supervisor
from shoes_vz.agent.runner import fill_bundle
from shoes_vz.agent.warm import SLOT_FILE, SLOT_PREFIX, WarmPool, WarmSlot, slots_dir
from shoes_vz.config import AgentSettings
from shoes_vz.core.errors import ConfigError, RunnerFailed, ShoesVzError
from shoes_vz.template import Template
from shoes_vz.vm import control
from shoes_vz.vm.bundle import Bundle, write_json_atomic
from shoes_vz.vm.exit_status import describe
from shoes_vz.vm.identity import new_mac
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

SAVE_TIMEOUT = 120.0
BUILDING_PREFIX, BUILDING_SUFFIX = "warm-", ".building"
RUNTIME_LEFTOVERS = ("control.sock", "vm.lock", ".metadata.lock", "RuntimeMetadata.json")


class WarmError(ShoesVzError):
    """A slot could not be made; nothing of it is left behind."""


@dataclass
class WarmReport:
    kept: list[WarmSlot] = field(default_factory=list)
    built: list[WarmSlot] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)   # stale or extra, but a live runner holds it


def slots_in_use(runners_dir: Path) -> set[Path]:
    """Slots a live runner on this host was cloned from."""
    used = set()
    for b in Bundle.all_in(runners_dir):
        if b.is_running():
            with contextlib.suppress(ShoesVzError):
                slot = b.read_metadata().get("warm_slot")
                if slot:
                    used.add(Path(str(slot)))
    return used


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
        _rmtree_frozen(path)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _rmtree_frozen(path: Path) -> None:
    for root, dirs, _ in os.walk(path):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _freeze(path: Path) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(path, 0o555)


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
        pool = WarmPool(s.templates_dir, s.driver)
        usable = await asyncio.to_thread(pool.slots, t)
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
        for i in range(count - len(report.kept)):
            self.on_event(f"slot {i + 1} of {count - len(report.kept)}: building")
            report.built.append(await self.build_one())
        return report

    def _all_slot_paths(self) -> list[Path]:
        """Every slot of every version of this template, and leftovers of interrupted builds."""
        base = self.settings.templates_dir / ".warm" / self.template.meta.name
        found = sorted(base.glob(f"*/{SLOT_PREFIX}*")) if base.is_dir() else []
        building = self.settings.runners_dir.glob(f"{BUILDING_PREFIX}*{BUILDING_SUFFIX}")
        return found + sorted(b for b in building if not Bundle(b).is_running())

    async def build_one(self) -> WarmSlot:
        s, t = self.settings, self.template
        slot_id = secrets.token_hex(4)
        # built where runners run (short control-socket paths; one volume), published by a rename
        tmp = Bundle(s.runners_dir / f"{BUILDING_PREFIX}{slot_id}{BUILDING_SUFFIX}")
        final = self.root / f"{SLOT_PREFIX}{slot_id}"
        self.root.mkdir(parents=True, exist_ok=True)
        s.runners_dir.mkdir(parents=True, exist_ok=True)
        avoid = {MACAddress.parse(str(b.read_metadata().get("mac_address")))
                 for b in Bundle.all_in(s.runners_dir) if b.read_metadata().get("mac_address")}
        mac = new_mac(avoid | WarmPool(s.templates_dir, s.driver).macs())
        proc: asyncio.subprocess.Process | None = None
        tmp.path.mkdir()
        try:
            await asyncio.to_thread(fill_bundle, tmp, t, None, allow_copy=s.allow_copy)
            meta = t.meta
            await asyncio.to_thread(
                tmp.update_metadata, runner_id=f"warm-{slot_id}", runner_name=f"warm slot {slot_id}",
                mac_address=str(mac), template=t.name, template_dir=str(t.path), driver=s.driver,
                notify_url="", ssh_port=meta.ssh_port, ssh_user=meta.ssh_user,
                runner_agent_port=s.runner_agent_port, cpu_count=meta.cpu_count, memory_bytes=meta.memory_bytes,
                created_at=time.time(),
            )
            proc = await supervisor.spawn(tmp, s.driver, lease_file=s.lease_file, boot_delay=s.sim_boot_delay,
                                          stop_grace=s.stop_grace)
            ip = await self._booted(tmp, proc, mac)
            self.on_event(f"  {ip}: SSH and runner-agent ready; saving the VM state")
            reply = await control.request(tmp.control_socket, "save", timeout=SAVE_TIMEOUT)
            if "error" in reply:
                raise WarmError(f"the VM could not save its state: {reply['error']}")
            if not await supervisor.wait_gone(tmp, proc, s.stop_grace + 10.0):
                raise WarmError("the VM did not stop after saving its state")
            proc = None
            if not tmp.saved_state.is_file():
                raise WarmError(f"the VM stopped but wrote no {tmp.saved_state.name}")
            slot = WarmSlot(final, meta.name, meta.version, dict(meta.digests), mac, ip, s.driver, time.time())
            await asyncio.to_thread(self._finish, tmp, slot)
            self.on_event(f"  saved {final}")
            return slot
        except BaseException as e:
            if proc is not None or tmp.is_running():
                await supervisor.stop(tmp, proc, 0.0)
            log_tail = _tail(tmp.log_file)
            await asyncio.to_thread(_rmtree_frozen, tmp.path)
            if isinstance(e, ShoesVzError | OSError | TimeoutError):
                raise WarmError(f"warm slot {slot_id} of {t.name}: {e or type(e).__name__}{log_tail}") from e
            raise

    async def _booted(self, bundle: Bundle, proc: asyncio.subprocess.Process, mac: MACAddress) -> str:
        """The guest's address once SSH (pinned host key) and the runner-agent answer."""
        s, meta = self.settings, self.template.meta
        deadline = time.monotonic() + s.boot_to_ip_timeout
        ip = ""
        while not ip:
            if proc.returncode is not None:
                raise WarmError(f"the VM exited while booting: {describe(proc.returncode)}")
            if time.monotonic() > deadline:
                raise WarmError(f"no DHCP lease for {mac} within {s.boot_to_ip_timeout:.0f}s ({s.lease_file})")
            lease = newest_lease_for(await asyncio.to_thread(read_leases, s.lease_file), mac)
            ip = lease.ip if lease is not None else ""
            if not ip:
                await asyncio.sleep(0.05)
        key_path = s.ssh_key or self.template.sim_client_key
        try:
            client_key = await asyncio.to_thread(asyncssh.read_private_key, str(key_path))
        except (OSError, asyncssh.KeyImportError) as e:
            raise ConfigError(f"no usable SSH key for guests at {key_path}: {e} (set agent.ssh_key)") from e
        try:
            conn = await ssh.wait_ready(ip, meta.ssh_port, meta.ssh_user, client_key,
                                        asyncssh.import_public_key(meta.ssh_host_key), s.ip_to_ssh_timeout)
        except RunnerFailed as e:
            raise WarmError(str(e)) from e
        conn.close()
        await self._runner_agent_ready(ip, time.monotonic() + s.ip_to_ssh_timeout)
        return ip

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
        _freeze(tmp.path)
        os.chmod(tmp.path, 0o755)  # a directory moved to another parent must be writable (its "..")
        try:
            os.rename(tmp.path, slot.path)
        except OSError as e:
            raise WarmError(f"cannot move the slot into {slot.path.parent}: {e} (templates and runners must "
                            "be on one volume)") from e
        os.chmod(slot.path, 0o555)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  vm log:\n    " + "\n    ".join(text) if text else ""
