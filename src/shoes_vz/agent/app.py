"""`Agent`: the per-Mac daemon's object graph — runners, IP notify, Sync, /metrics, state file.

Start it with `async with Agent(settings):` (tests bind port 0); `agent.run_forever()` is the CLI's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from shoes_vz.agent import supervisor
from shoes_vz.agent.degraded import Degraded
from shoes_vz.agent.disk import check_reserve, free_bytes, reserve_bytes
from shoes_vz.agent.evidence import Evidence
from shoes_vz.agent.mac_pool import MacPool
from shoes_vz.agent.metrics import AgentMetrics
from shoes_vz.agent.notify import NotifyServer
from shoes_vz.agent.reaper import ReapPolicy, keep_reaping
from shoes_vz.agent.runner import Runner, RunnerSpec
from shoes_vz.agent.ssh_ca import UserCA
from shoes_vz.agent.state_file import StateFile
from shoes_vz.agent.sync import SyncClient
from shoes_vz.agent.warm import WarmPool, WarmSlot
from shoes_vz.config import AgentSettings
from shoes_vz.core.conditions import HostConditions, Reason, reason_for
from shoes_vz.core.errors import CloneError, ConfigError, DiskBelowReserve, InvalidInput, TemplateError
from shoes_vz.core.ids import new_agent_id, new_runner_id, validate_agent_id
from shoes_vz.core.net import split_hostport
from shoes_vz.core.pidlock import PIDLock
from shoes_vz.core.states import Phase
from shoes_vz.template import Template, TemplateStore, UsableTemplates
from shoes_vz.template.metadata import FILE_NAME
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.clone import check_clone
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.leases import MACAddress
from shoes_vz.vm.process import preflight

log = logging.getLogger(__name__)
CONDITION_RECHECK_INTERVAL = 10.0


@dataclass(frozen=True)
class Ack:
    request_id: str
    ok: bool
    error: str = ""


def load_agent_id(state_dir: Path) -> str:
    """The host's stable agent id, made once and kept in the state dir."""
    path = state_dir / "agent-id"
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            try:
                validate_agent_id(value)
            except InvalidInput as e:
                raise ConfigError(f"{path}: {e} (remove the file: the agent makes a new id and enrols)") from None
            return value
    state_dir.mkdir(parents=True, exist_ok=True)
    value = new_agent_id()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.templates = UsableTemplates(TemplateStore(settings.templates_dir),
                                         settings.state_dir / "template-digests.json")
        self.warm = WarmPool(settings.templates_dir, settings.driver)
        self.lease_file = settings.lease_file
        self.runners: dict[str, Runner] = {}
        self.changed = asyncio.Event()
        self.cpu_cores = os.cpu_count() or 1
        self.memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.agent_id = ""
        self.notify_port = 0
        self.metrics_port = 0
        self._acks: list[Ack] = []
        self._failed_and_gone: list[Runner] = []
        self._handled: dict[str, Ack] = {}
        self._deletes: dict[str, list[str]] = {}  # runner id → delete request ids waiting for "gone"
        self.ca: UserCA | None = None  # the SSH user CA every runner's certificate comes from (ssh_ca.py)
        self._notify: NotifyServer | None = None
        self._observed: set[str] = set()
        self._state = StateFile(settings.runner_state_file)
        self.host_slots = supervisor.host_slots(settings)
        self.conditions = HostConditions()
        self.metrics = AgentMetrics(lambda: (r.phase for r in self.runners.values()), self.capacity,
                                    lambda: free_bytes(self.settings.runners_dir),
                                    lambda: [c.reason for c in self.conditions.list()])
        self.evidence = Evidence(settings.state_dir / "evidence", keep=settings.evidence_keep,
                                 max_age=settings.evidence_max_age)
        self.degraded = Degraded(self.conditions, self._publish, self._probe_vm, settings.degraded_probe_after)
        self.macs = MacPool(settings.state_dir, recycle=settings.mac_recycling)
        self.lock = PIDLock(settings.state_dir / "agent.lock", "agent")

        self.sync = SyncClient(self)
        self._sites: list[web.AppRunner] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._recheck_task: asyncio.Task[None] | None = None
        self._reap_task: asyncio.Task[None] | None = None

    @property
    def capacity(self) -> int:
        """Runners this agent offers: never more than the host's VM limit (shared with `template warm`,
        `freeze --boot` and `template create`, which take host VM slots too)."""
        return min(self.settings.max_runners, self.settings.host_vm_limit)

    def _vms_of_others(self) -> list[str]:
        """Host VM slots held by processes that are not this agent's runners (e.g. a warm-slot build)."""
        ours = {str(r.bundle.path) for r in self.runners.values()}
        return [h.describe() for h in self.host_slots.holders()
                if h.what.removeprefix("vm run ") not in ours]

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        # one agent per state directory: two would share an agent id and knock each other off the server
        await asyncio.to_thread(self.lock.acquire, f"the agent state directory {s.state_dir}",
                                "Stop that agent, or give this one another state directory (agent.state_dir).")
        if s.driver == "vz":
            await asyncio.to_thread(self._doctor)
        problems = await asyncio.to_thread(preflight, s.driver)
        if problems:  # said once, here, rather than by every runner's VM process
            raise ConfigError(f"the {s.driver} driver cannot run here: " + "; ".join(problems))
        self.agent_id = await asyncio.to_thread(load_agent_id, s.state_dir)
        self.ca = await asyncio.to_thread(UserCA.load_or_create, s.state_dir)
        await self._verify_templates()
        await asyncio.to_thread(self.warm.refresh, self.templates.list())
        s.runners_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._check_clones)
        await self._check_disk_reserve()  # a host that starts below it is out of placement from its first Sync
        await asyncio.to_thread(self.evidence.prune)
        await asyncio.to_thread(self._sweep_stale_bundles)
        await asyncio.to_thread(self.macs.load)
        await self._adopt_live_bundles()
        self.macs.reconcile({r.runner_id: r.mac for r in self.runners.values() if r.spec.warm_slot is None})
        self._notify = NotifyServer(lambda: list(self.runners.values()), self.lease_file)
        try:
            self.notify_port = await self._notify.start(s.notify_listen)
        except OSError as e:
            raise ConfigError(f"agent: cannot listen on {s.notify_listen}: {e}") from e
        # guests are told the port actually bound (port 0 in tests)
        self.settings = s = s.model_copy(update={"notify_url": s.effective_notify_url(self.notify_port)})
        if s.metrics_listen:
            app = web.Application()
            app.router.add_get("/metrics", self.metrics.handle)
            self.metrics_port = await self._serve(app, s.metrics_listen)
        await asyncio.to_thread(self.lock.update, address=f"notify {s.notify_listen.rpartition(':')[0]}:"
                                f"{self.notify_port}, server {s.server_addr}, agent id {self.agent_id}")
        self._publish()
        self._sync_task = asyncio.create_task(self.sync.run(), name="sync")
        self._recheck_task = asyncio.create_task(self._recheck_conditions(), name="host-conditions")
        self._reap_task = asyncio.create_task(keep_reaping(
            lambda: self.runners.values(), ReapPolicy.of(s), s.guest_poll_interval), name="reaper")

    def _check_clones(self) -> None:
        """Runners are clones: a runners directory that cannot clone the templates stops the agent
        here, naming the volumes and the fix — not every AddInstance later (unless allow_copy)."""
        s = self.settings
        probe = self.templates.list()[0].path / FILE_NAME
        try:
            check_clone(probe, s.runners_dir)
        except CloneError as e:
            if not s.allow_copy:
                raise ConfigError(f"the runners directory {s.runners_dir} cannot make runners from the templates "
                                  f"in {s.templates_dir}: {e}") from None
            log.warning("allow_copy: every runner is a full copy of its template (slow; dev only): %s", e)

    def host_problem(self, e: BaseException) -> None:
        """A runner could not be made for a reason of this host's (runner.on_host_problem): take the
        host out of placement until the re-check passes."""
        reason = reason_for(e)
        where = self.settings.runners_dir
        fix = (f"free space on the volume of {where}" if reason in (Reason.DISK_FULL, Reason.DISK_RESERVE)
               else f"make {where} clone again")
        if reason is not None and self.conditions.set(reason, f"{e}; fix: {fix} (the agent re-checks by itself)"):
            log.error("host condition %s: %s; no new runners here until it clears", reason, e)
            self._publish()

    async def _recheck_conditions(self) -> None:
        """The runners volume's free space against the reserve (either way); the clone and disk-full
        conditions cleared once a probe clone into the runners directory works again."""
        while True:
            await asyncio.sleep(CONDITION_RECHECK_INTERVAL)
            await self._check_disk_reserve()
            if not ({Reason.CLONE_FAILED, Reason.DISK_FULL} & {c.reason for c in self.conditions.list()}):
                continue
            try:
                await asyncio.to_thread(check_clone, self.templates.list()[0].path / FILE_NAME,
                                        self.settings.runners_dir)
            except (CloneError, OSError, IndexError):
                continue
            if self.conditions.clear(Reason.CLONE_FAILED, Reason.DISK_FULL):
                log.info("host conditions cleared: the runners directory clones again")
                self._publish()

    async def _check_disk_reserve(self) -> None:
        reserve = reserve_bytes(self.settings.disk_reserve, self.templates.list())
        try:
            await asyncio.to_thread(check_reserve, self.settings.runners_dir, reserve)
        except DiskBelowReserve as e:
            self.host_problem(e)
            return
        except OSError:
            return  # the runners directory itself: the clone check's to tell
        if self.conditions.clear(Reason.DISK_RESERVE):
            log.info("host condition cleared: the runners volume has its reserve free again")
            self._publish()

    async def _verify_templates(self) -> None:
        """Fully verify every frozen template (off the loop; digests cached by stat in the state dir).

        A refused template is logged with its fix and is neither reported nor used. With no usable
        template at all the agent stops: it could serve nothing, and a failed start is what an
        operator (and launchd) notices — an agent that registers with nothing to offer looks healthy.
        """
        refused = await asyncio.to_thread(self.templates.verify_all)
        for v in refused:
            log.error("refusing template %s: %s (fix: %s)", v.path, "; ".join(v.problems), v.fix)
        usable = self.templates.list()
        if not usable:
            raise ConfigError(
                f"no usable template in {self.settings.templates_dir}"
                + (f" ({len(refused)} refused: " + "; ".join(f"{v.path.name}: {v.problems[0]}" for v in refused)
                   + ")" if refused else "")
                + ": make one (`shoes-vz template import-tart`, `template create`, `template init-sim`) and "
                "`shoes-vz template freeze` it; `shoes-vz template verify NAME` shows what is wrong")
        log.info("templates: %s", ", ".join(f"{t.name} v{t.meta.version}" for t in usable))

    def _doctor(self) -> None:
        """`shoes-vz doctor` at start: warnings are logged, a fatal check stops the agent."""
        from shoes_vz.macos.doctor import Level, Probes, run_checks

        s = self.settings
        checks = run_checks(Probes(), s.templates_dir, s.runners_dir, lease_file=s.lease_file,
                            mac_recycling=s.mac_recycling)
        for c in checks:
            if c.level is Level.WARN:
                log.warning("doctor: %s: %s (fix: %s)", c.name, c.message, c.fix)
        fatal = [c for c in checks if c.level is Level.FATAL]
        if fatal:
            raise ConfigError("the vz driver cannot run on this host:\n" + "\n".join(
                f"  {c.name}: {c.message}" + (f"\n    fix: {c.fix}" if c.fix else "") for c in fatal))

    async def stop(self, *, tear_down: bool = False) -> None:
        """Stop serving. VMs keep running unless `tear_down` (a restarted agent re-adopts them)."""
        for task in (self._sync_task, self._recheck_task, self._reap_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sync_task = self._recheck_task = self._reap_task = None
        await self.degraded.close()
        if tear_down:
            await asyncio.gather(*(r.delete() for r in list(self.runners.values())), return_exceptions=True)
        # a teardown under way finishes (bounded): no half-removed bundle is left for the next start
        started = [t for r in self.runners.values() if (t := r.teardown) is not None and not t.done()]
        if started:
            await asyncio.wait(started, timeout=self.settings.stop_grace + 10.0)
        for site in reversed(self._sites):
            await site.cleanup()
        self._sites = []
        if self._notify is not None:
            await self._notify.close()
            self._notify = None
        await self._state.drain()
        await self.macs.drain()
        self.lock.release()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(tear_down=True)

    async def _serve(self, app: web.Application, listen: str) -> int:
        host, port = split_hostport(listen)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ConfigError(f"agent: cannot listen on {listen}: {e}") from e
        self._sites.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    def _sweep_stale_bundles(self) -> None:
        """Bundles whose VM process is gone are garbage: remove them (never adopt a dead VM)."""
        for p in self.settings.runners_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
        for b in Bundle.all_in(self.settings.runners_dir):
            if not b.is_running():
                # its VM died while no agent watched: what its guest started dies with it, before the
                # bundle (which finds those processes) goes
                killed = b.kill_strays()
                log.info("removing stale bundle %s%s", b.path, f" (killed {killed} guest processes)" if killed else "")
                shutil.rmtree(b.path, ignore_errors=True)

    async def _adopt_live_bundles(self) -> None:
        """VM processes survive an agent restart; take their runners back (the server then keeps
        or deletes each one by reconciliation)."""
        for b in await asyncio.to_thread(Bundle.all_in, self.settings.runners_dir):
            meta = await asyncio.to_thread(b.read_metadata)
            try:
                template = self.templates.get(str(meta["template"]))
                mac = MACAddress.parse(str(meta["mac_address"]))
                slot = WarmSlot.read(Path(str(meta["warm_slot"]))) if meta.get("warm_slot") else None
                spec = RunnerSpec(b.runner_id, str(meta.get("runner_name", "")), "", template,
                                  str(meta.get("resource_type", "")), list(meta.get("labels", [])), slot)
                if slot is not None:
                    self.warm.adopt(slot.path, b.runner_id)
            except (KeyError, ValueError, TypeError, OSError, TemplateError, ConfigError) as e:
                log.error("cannot adopt %s (%s): stopping its VM", b.path, e)
                await supervisor.stop(b, None, self.settings.stop_grace)
                await asyncio.to_thread(shutil.rmtree, b.path, True)
                continue
            assert self.ca is not None
            runner = Runner(spec, mac, self.settings, self.lease_file, self.ca, self._runner_changed, self.evidence,
                            others=self._runner_ips)
            self.runners[runner.runner_id] = runner
            runner.adopt(meta)
            log.info("adopted runner %s (%s) in %s", runner.runner_id, spec.runner_name, runner.phase)

    # -- commands (idempotent by request id) ------------------------------------------------------
    def take_acks(self) -> list[Ack]:
        acks, self._acks = self._acks, []
        return acks

    def take_failed_and_gone(self) -> list[Runner]:
        """Failed runners torn down since the last Sync message: reported once more, in ERROR with
        their error, so the server (and the AddInstance waiting on them) learns why even when the
        failure and the teardown fell between two messages."""
        gone, self._failed_and_gone = self._failed_and_gone, []
        return gone

    def _ack(self, ack: Ack) -> None:
        self._handled[ack.request_id] = ack
        self._acks.append(ack)
        self.changed.set()

    def handle_create(self, request_id: str, runner_id: str, runner_name: str, setup_script: str,
                      resource_type: str, template_name: str, labels: list[str]) -> None:
        if request_id in self._handled:
            self._ack(self._handled[request_id])
            return
        if runner_id in self.runners:
            self._ack(Ack(request_id, True))
            return
        if self.conditions:  # the server places nothing here; a command sent before it knew is refused
            self._ack(Ack(request_id, False, "host out of placement: " + "; ".join(
                c.describe() for c in self.conditions.list())))
            return
        live = [r for r in self.runners.values() if r.live or r.phase == Phase.ERROR]
        if len(live) >= self.capacity:
            self._ack(Ack(request_id, False, f"agent at capacity ({self.capacity} runners)"))
            return
        others = self._vms_of_others()  # a few non-blocking flocks: cheap enough for the loop
        if len(live) + len(others) >= self.settings.host_vm_limit:
            self._ack(Ack(request_id, False, f"host at capacity: {len(live)} runners and {len(others)} other VMs "
                          f"({', '.join(others)}) hold the host's {self.settings.host_vm_limit} VM slots"))
            return
        try:
            template = (self.templates.get(template_name) if template_name
                        else self.templates.for_resource_type(resource_type))
            if template is None:
                raise TemplateError(f"no template serves resource type {resource_type!r}")
        except (TemplateError, ConfigError, OSError) as e:
            self._ack(Ack(request_id, False, str(e)))
            return
        slot = self.warm.claim(template, runner_id) if self.settings.use_warm_slots else None
        spec = RunnerSpec(runner_id, runner_name, setup_script, template, resource_type, labels, slot)
        # a slot's identity is its own (held by this runner alone); a cold runner takes a recycled MAC that
        # no live VM and no slot has (agent/mac_pool.py)
        mac = slot.mac if slot is not None else self.macs.acquire(
            runner_id, {r.mac for r in self.runners.values()} | self.warm.macs())
        assert self.ca is not None
        runner = Runner(spec, mac, self.settings, self.lease_file, self.ca, self._runner_changed, self.evidence,
                        self.host_problem, others=self._runner_ips)
        self.runners[runner_id] = runner
        runner.start()
        self._ack(Ack(request_id, True))
        self._publish()

    def handle_delete(self, request_id: str, runner_id: str) -> None:
        if request_id in self._handled:
            self._ack(self._handled[request_id])
            return
        runner = self.runners.get(runner_id)
        if runner is None:
            self._ack(Ack(request_id, True))  # already gone: deleting is idempotent
            return
        self._deletes.setdefault(runner_id, []).append(request_id)
        runner.delete()

    def _runner_ips(self) -> dict[str, str]:
        """The addresses live runners hold (a runner channel never gives one of them to another runner)."""
        return {r.runner_id: r.ip for r in self.runners.values() if r.live and r.ip}

    # -- state fan-out ----------------------------------------------------------------------------
    def _runner_changed(self, runner: Runner) -> None:
        if runner.phase == Phase.ERROR and runner.exit_code == VMExit.HOST_QUOTA:
            self.degraded.enter(f"runner {runner.runner_id}: {runner.error}")
        if runner.phase == Phase.RUNNING and runner.runner_id not in self._observed:
            self._observed.add(runner.runner_id)
            t = runner.timings
            self.metrics.observe(t.clone, t.boot_to_ssh, t.total)
        if runner.phase == Phase.GONE:
            if runner.error:
                self._failed_and_gone.append(runner)
            if runner.reaped is not None:
                self.metrics.reaped.labels(reason=runner.reaped.value).inc()
            self.runners.pop(runner.runner_id, None)
            self.warm.release(runner.runner_id)
            if runner.spec.warm_slot is None:
                self.macs.release(runner.runner_id, vm_gone=runner.vm_gone)
            self._observed.discard(runner.runner_id)
            for rid in self._deletes.pop(runner.runner_id, []):
                self._ack(Ack(rid, True))
        self._publish()

    def _publish(self) -> None:
        self.changed.set()
        self._state.update(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "driver": self.settings.driver,
            "max_runners": self.capacity,
            "runners": [r.record() for r in self.runners.values()],
            "conditions": [asdict(c) for c in self.conditions.list()],  # why no runners are taken here now
        }

    async def _probe_vm(self) -> tuple[bool, str]:
        """Does a VM start here? One of the first template, booted to SSH, then torn down (agent/degraded.py).
        It is no runner: the server never hears of it."""
        probe_id = new_runner_id()
        try:
            template = self.templates.list()[0]
        except (IndexError, TemplateError, ConfigError, OSError) as e:
            return False, f"no probe possible: {e}"
        assert self.ca is not None
        mac = self.macs.acquire(probe_id, {r.mac for r in self.runners.values()} | self.warm.macs())
        probe = Runner(RunnerSpec(probe_id, "degraded-probe", "true\n", template), mac, self.settings,
                       self.lease_file, self.ca, lambda _r: None, others=self._runner_ips)
        probe.start()
        try:
            while probe.live and probe.phase not in (Phase.SSH_READY, Phase.RUNNING):
                await asyncio.sleep(0.1)  # bounded by create_timeout
            return probe.phase in (Phase.SSH_READY, Phase.RUNNING), probe.error
        finally:
            await probe.delete()
            self.macs.release(probe_id, vm_gone=probe.vm_gone)

    def warm_slot_counts(self, template: Template) -> tuple[int, int]:
        """(warm slots, free warm slots) this host holds for `template`."""
        return self.warm.counts(template)
