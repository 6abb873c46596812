"""`Runner`: one runner's life on this host, carrying out the lifecycle table's effects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shoes_vz.agent import ssh, supervisor
from shoes_vz.agent.disk import check_reserve, reserve_bytes
from shoes_vz.agent.evidence import Evidence
from shoes_vz.agent.lifecycle import Event, advance
from shoes_vz.agent.reaper import GuestSeen, registered
from shoes_vz.agent.runner_channel import ChannelRefused, Identity, RunnerChannel
from shoes_vz.agent.ssh_ca import UserCA, source_address_toward
from shoes_vz.agent.vm_files import fill_bundle, fill_from_slot
from shoes_vz.agent.warm import WarmSlot
from shoes_vz.config import AgentSettings
from shoes_vz.core.errors import CloneError, RunnerFailed, ShoesVzError
from shoes_vz.core.states import LIVE_PHASES, GuestState, Phase, ReapReason
from shoes_vz.template import Template
from shoes_vz.template.use_lock import UseLock
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.exit_status import describe, is_capacity
from shoes_vz.vm.leases import Lease, MACAddress, newest_lease_for, no_lease_reason, read_leases

log = logging.getLogger(__name__)


@dataclass
class Timings:
    clone: float | None = None
    boot_to_ssh: float | None = None
    total: float | None = None


@dataclass
class RunnerSpec:
    runner_id: str
    runner_name: str
    setup_script: str
    template: Template
    resource_type: str = ""
    labels: list[str] = field(default_factory=list)
    warm_slot: WarmSlot | None = None


class Runner:
    def __init__(
        self,
        spec: RunnerSpec,
        mac: MACAddress,
        settings: AgentSettings,
        lease_file: Path,
        ca: UserCA,
        on_change: Callable[[Runner], None],
        evidence: Evidence | None = None,
        on_host_problem: Callable[[ShoesVzError | OSError], None] | None = None,
        others: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.spec = spec
        self.mac = mac
        self.settings = settings
        self.lease_file = lease_file
        self.ca = ca
        self.on_change = on_change
        self.evidence = evidence
        self.on_host_problem = on_host_problem
        self.evidence_log: Path | None = None  # the VM log, kept once the runner failed
        self.phase = Phase.CREATING
        self.guest_state = GuestState.UNSPECIFIED
        self.error = ""
        self.capacity_error = False
        self.ip = ""
        self.token = ""
        self.timings = Timings()
        self.restored: bool | None = None  # from a warm slot: did the restore work (else: cold boot)
        self.created_at = time.time()
        self.bundle = Bundle.for_runner(settings.runners_dir, spec.runner_id)
        self.proc: asyncio.subprocess.Process | None = None
        # the runner's address, token and host key come from its VM's channel alone (docs/security.md §8)
        self.channel = RunnerChannel(self.bundle, spec.runner_id, mac, lease_file, ca.public_line, others,
                                     settings.restore_announce_timeout)
        self.identity: Identity | None = None  # what the channel said (None until it did)
        self._task: asyncio.Task[None] | None = None
        self._teardown: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._use: UseLock | None = None  # the template's use lock, until the VM process holds it
        self._old_lease: Lease | None = None  # the MAC's lease before its VM started
        self.reaped: ReapReason | None = None  # torn down without myshoes, and why (agent/reaper.py)
        self.polled = False  # the guest's /status was asked since this agent tracks the runner
        self.registered_at: float | None = None
        self.finished_at: float | None = None
        self.exit_code: int | None = None  # the VM process's, once it exited by itself (vm/exit_status.py)
        self.vm_gone = True  # at teardown: its VM process had exited (its MAC may go to another VM)
        self.gone = asyncio.Event()

    @property
    def runner_id(self) -> str:
        return self.spec.runner_id

    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES

    # -- transitions ------------------------------------------------------------------------------
    def _on(self, event: Event) -> None:
        new = advance(self.phase, event)
        if new != self.phase:
            log.info("runner %s (%s): %s → %s", self.runner_id, self.spec.runner_name, self.phase, new)
            self.phase = new
            self.on_change(self)

    def fail(self, message: str, *, capacity: bool = False, with_log: bool = False) -> None:
        """ERROR, then tear down. `with_log` appends the VM log's path — the kept copy, which outlives
        the bundle (agent/evidence.py)."""
        if self.phase in (Phase.TEARING_DOWN, Phase.GONE, Phase.ERROR):
            return
        if with_log:
            kept = self._log_for_message()
            # the driver's own words may name the bundle's log, which teardown removes: name the kept one
            message = message.replace(str(self.bundle.log_file), kept)
            message = message if kept in message else f"{message} (log: {kept})"
        self.error = message
        self.capacity_error = capacity
        log.warning("runner %s failed: %s", self.runner_id, message)
        self._on(Event.FAILED)
        self.delete()  # never repair: destroy, myshoes retries

    # -- adoption (agent restart) ----------------------------------------------------------------
    def adopt(self, meta: dict[str, Any]) -> None:
        """Take back a runner whose VM process outlived the previous agent.

        A runner that had finished starting resumes being tracked; one caught half-way is
        destroyed (never repaired).
        """
        self.ip = str(meta.get("ip_address", ""))
        self.restored = meta.get("restored")
        self.created_at = float(meta.get("created_at", self.created_at))
        timings = meta.get("timings") or {}
        self.timings = Timings(timings.get("clone"), timings.get("boot_to_ssh"), timings.get("total"))
        if self.ip and meta.get("ssh_ready_at"):
            self.phase = Phase.RUNNING
            self._watcher = asyncio.create_task(self._watch_adopted_vm())
            self._task = asyncio.create_task(self._poll_guest(), name=f"runner-{self.runner_id}")
        else:
            self.phase = Phase.BOOTING
            self.fail("the agent restarted while this runner was starting")

    async def _watch_adopted_vm(self) -> None:
        while self.live and await asyncio.to_thread(self.bundle.is_running):
            await asyncio.sleep(1.0)
        if self.live:
            words = await asyncio.to_thread(self._last_words)
            if self.live:
                self.reaped = ReapReason.VM_DIED
                self.fail(f"VM process exited while {self.phase}{words}", with_log=True)

    # -- create -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._create(), name=f"runner-{self.runner_id}")

    async def _create(self) -> None:
        s = self.settings
        started = time.monotonic()
        try:
            async with asyncio.timeout(s.create_timeout):
                self._use = await asyncio.to_thread(self._make_bundle)
                self.timings.clone = time.monotonic() - started
                # a recycled MAC's lease from its last VM is no address of this one's (agent/mac_pool.py)
                self._old_lease = newest_lease_for(await asyncio.to_thread(read_leases, self.lease_file), self.mac)
                try:
                    self.proc = await supervisor.spawn(
                        self.bundle, s.driver, lease_file=self.lease_file, boot_delay=s.sim_boot_delay,
                        restore_delay=s.sim_restore_delay, stop_grace=s.stop_grace, hold=self._use,
                        host_slots=supervisor.host_slots(s), restore_timeout=s.restore_timeout,
                        live_timeout=s.restore_live_timeout, driver_options=s.driver_options,
                    )
                finally:
                    self._release_template()
                self._on(Event.CLONED)
                self._watcher = asyncio.create_task(self._watch_vm())
                ident = self.identity = await self._identify()
                self.ip, self.token = ident.ip, ident.token
                meta = self.spec.template.meta
                # a certificate for this runner alone, valid minutes, from this host's address toward it
                cred = self.ca.issue(self.runner_id, s.ssh_cert_ttl, source_address_toward(ident.ip))
                conn = await ssh.wait_ready(
                    ident.ip, meta.ssh_port, meta.ssh_user, cred.client_key, ident.host_key, s.ip_to_ssh_timeout,
                )
                ready = time.time()
                try:
                    vm_meta = await asyncio.to_thread(self.bundle.read_metadata)
                    vm_started = vm_meta.get("started_at")
                    self.restored = vm_meta.get("restored")
                    self.timings.boot_to_ssh = ready - float(vm_started) if vm_started else None
                    self._on(Event.SSH_READY)
                    await ssh.start_detached(conn, self.spec.setup_script)
                finally:
                    conn.close()
                self.timings.total = time.monotonic() - started
                await asyncio.to_thread(
                    self.bundle.update_metadata, ip_address=self.ip, ssh_ready_at=ready,
                    timings=self.timings.__dict__,
                )
                self._on(Event.SETUP_STARTED)
        except TimeoutError:  # only asyncio.timeout above: the inner deadlines raise RunnerFailed
            no_ip = ""
            if self.phase == Phase.BOOTING and not self.ip:
                no_ip = ": " + await asyncio.to_thread(no_lease_reason, self.lease_file, self.mac)
            self.fail(f"not ready within create_timeout ({s.create_timeout:g}s) while {self.phase}{no_ip}",
                      with_log=self.proc is not None)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if self.proc is None and self.on_host_problem is not None and isinstance(e, (CloneError, OSError)):
                self.on_host_problem(e)  # before the failure is published: the next placement avoids this host
            self.fail(f"{type(e).__name__}: {e}" if not isinstance(e, RunnerFailed) else str(e),
                      with_log=self.proc is not None)
            return
        await self._poll_guest()

    def _release_template(self) -> None:
        if self._use is not None:
            self._use.close()
            self._use = None

    def _make_bundle(self) -> UseLock:
        """Clone the template (or the runner's warm slot) into a temp dir, then rename into place.
        The template's use lock is taken first (`freeze` cannot replace it from here on) and returned
        for the VM process to inherit."""
        t = self.spec.template
        use = UseLock.take(t.path)
        try:
            self._fill(t)
        except BaseException:
            use.close()
            raise
        return use

    def _fill(self, t: Template) -> None:
        t.check()
        tmp = Bundle.temporary_for(self.settings.runners_dir, self.runner_id)
        self.settings.runners_dir.mkdir(parents=True, exist_ok=True)
        check_reserve(self.settings.runners_dir, reserve_bytes(self.settings.disk_reserve, [t]))  # agent/disk.py
        shutil.rmtree(tmp.path, ignore_errors=True)
        tmp.path.mkdir()
        try:
            slot = self.spec.warm_slot
            if slot is not None and not fill_from_slot(tmp, t, slot, allow_copy=self.settings.allow_copy):
                slot = None  # the runner keeps the slot's MAC (it holds the slot until it is gone)
            if slot is None:
                fill_bundle(tmp, t, None, allow_copy=self.settings.allow_copy)
            meta = t.meta
            tmp.update_metadata(
                runner_id=self.runner_id, runner_name=self.spec.runner_name,
                mac_address=str(self.mac), template=t.name, template_dir=str(t.path),
                warm_slot=str(self.spec.warm_slot.path) if self.spec.warm_slot else "",  # held either way
                resource_type=self.spec.resource_type, labels=self.spec.labels,
                driver=self.settings.driver, notify_url=self.settings.effective_notify_url(),
                ssh_port=meta.ssh_port, ssh_user=meta.ssh_user,
                runner_agent_port=self.settings.runner_agent_port,
                cpu_count=meta.cpu_count, memory_bytes=meta.memory_bytes, created_at=self.created_at,
            )
            os.rename(tmp.path, self.bundle.path)
        except BaseException:
            shutil.rmtree(tmp.path, ignore_errors=True)
            raise

    async def _identify(self) -> Identity:
        """Who this runner is — address, /exec token, SSH host key — from its VM's channel alone."""
        try:
            return await self.channel.identify(self.settings.boot_to_ip_timeout)
        except ChannelRefused:
            raise
        except RunnerFailed as e:  # this deadline, not create_timeout (that one cancels, it never lands here)
            why = await asyncio.to_thread(no_lease_reason, self.lease_file, self.mac)
            raise RunnerFailed(f"{e}; and {why}") from None

    def notified(self, ip: str) -> None:
        """A matched IP notify: only a hint to say hello now (the address comes from the channel)."""
        self.channel.hint()
        if self.ip and ip != self.ip:
            log.warning("runner %s notified from another address %s (it is at %s)", self.runner_id, ip, self.ip)

    async def _watch_vm(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if not self.live:
            return
        self.exit_code = code
        words = await asyncio.to_thread(self._last_words)
        if self.live:
            self.reaped = ReapReason.VM_DIED
            self.fail(f"VM process exited while {self.phase}: {describe(code)}{words}",
                      capacity=is_capacity(code), with_log=True)

    def _last_words(self) -> str:
        """What the VM process said as it gave up (`exit_reason` in its metadata), as `: …`."""
        try:
            reason = str(self.bundle.read_metadata().get("exit_reason", "")).strip()
        except ShoesVzError:
            return ""
        return f": {reason}" if reason else ""

    def _log_for_message(self) -> str:
        """The VM log an error message may name: the kept copy (it outlives the bundle)."""
        if self.evidence is not None:
            kept = self.evidence.take_log(self.bundle)
            if kept is not None:
                self.evidence_log = kept
                return str(kept)
            if self.evidence.keep <= 0:
                return "not kept: evidence_keep is 0"
        return str(self.bundle.log_file) if self.bundle.log_file.exists() else "none was written"

    def record(self) -> dict[str, Any]:
        """The agent's view of this runner (runner-state.json's entry, and the evidence's runner.json)."""
        return {
            "runner_id": self.runner_id, "runner_name": self.spec.runner_name, "state": self.phase.value,
            "guest_runner_state": self.guest_state.value, "ip_address": self.ip, "mac_address": str(self.mac),
            "template": self.spec.template.name, "resource_type": self.spec.resource_type,
            "warm_slot": str(self.spec.warm_slot.path) if self.spec.warm_slot else "", "restored": self.restored,
            "error": self.error, "created_at": self.created_at, "timings": dict(self.timings.__dict__),
            "bundle": str(self.bundle.path), "reaped": self.reaped.value if self.reaped else "",
            # the guest's per-boot host key as its channel announced it (public): what `shoes-vz ssh` pins
            "ssh_host_key": (self.identity.host_key.export_public_key().decode().strip()
                             if self.identity is not None else ""),
        }

    # -- reaping (agent/reaper.py) ------------------------------------------------------------------
    def seen(self) -> GuestSeen:
        return GuestSeen(self.created_at, self.polled, self.registered_at, self.finished_at, self.guest_state)

    def reap(self, reason: ReapReason, message: str) -> None:
        """Tear down without myshoes; the error (kept by the server, the evidence) says why."""
        if self.phase != Phase.RUNNING:
            return
        self.reaped = reason
        self.error = f"reaped ({reason}): {message}"
        log.warning("runner %s (%s) %s", self.runner_id, self.spec.runner_name, self.error)
        self.delete()

    async def _poll_guest(self) -> None:
        """Track the runner inside the guest through the runner-agent's /status."""
        url = f"http://{self.ip}:{self.settings.runner_agent_port}/status"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while self.phase == Phase.RUNNING:
                try:
                    async with http.get(url) as resp:
                        data: dict[str, Any] = await resp.json()
                    state = GuestState(str(data.get("state", "")).lower())
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    state = GuestState.OFFLINE if self.guest_state != GuestState.UNSPECIFIED else self.guest_state
                self.polled = True
                if state != self.guest_state:
                    self.guest_state = state
                    now = time.time()
                    if registered(state) and self.registered_at is None:
                        self.registered_at = now
                    if state == GuestState.FINISHED and self.finished_at is None:
                        self.finished_at = now
                    self.on_change(self)
                await asyncio.sleep(self.settings.guest_poll_interval)

    # -- teardown ---------------------------------------------------------------------------------
    @property
    def teardown(self) -> asyncio.Task[None] | None:
        """The teardown under way (or done), if one started."""
        return self._teardown

    def delete(self) -> asyncio.Task[None]:
        if self._teardown is None:
            self._teardown = asyncio.create_task(self._tear_down(), name=f"teardown-{self.runner_id}")
        return self._teardown

    async def _tear_down(self) -> None:
        self._on(Event.DELETE)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._release_template()
        try:
            await supervisor.stop(self.bundle, self.proc, self.settings.stop_grace)
            self.vm_gone = not await asyncio.to_thread(self.bundle.is_running)
            if self.evidence is not None and (self.error or self.settings.evidence_for_every_runner):
                await asyncio.to_thread(self.evidence.keep_runner, self.bundle, self.record())
            await asyncio.to_thread(shutil.rmtree, self.bundle.path, True)
            await asyncio.to_thread(
                shutil.rmtree, Bundle.temporary_for(self.settings.runners_dir, self.runner_id).path, True
            )
        except Exception as e:  # teardown must finish; report what was left
            log.error("runner %s teardown problem: %s", self.runner_id, e)
        self._on(Event.TORN_DOWN)
        self.gone.set()
