"""The agent's /metrics: this host only, every name `shoesvz_agent_…` (docs/operations.md §metrics).

The server's `shoesvz_…` names are fleet-wide; an agent never repeats them, so a Prometheus that
scrapes both does not count a runner twice. Gauges are read when scraped (the disk and the lease
file off the loop); counters and histograms are fed by the agent as things happen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shoes_vz import __version__
from shoes_vz.core.conditions import Reason
from shoes_vz.core.states import GuestState, Phase, ReapReason
from shoes_vz.vm.leases import read_leases

if TYPE_CHECKING:
    from shoes_vz.agent.app import Agent
    from shoes_vz.agent.runner import Runner

STARTUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)
FAILABLE = (Phase.CREATING, Phase.BOOTING, Phase.SSH_READY, Phase.RUNNING)
# bootpd's shared-network pool (192.168.64.2-254); the sim driver's pool_size option overrides it
DEFAULT_DHCP_POOL = 253


@dataclass
class HostReadings:
    """What a scrape reads from the host (in a thread); NaN where it could not (a gone runners
    directory: the agent's host conditions say so), never a 0 that reads as "full"."""

    free_bytes: float = math.nan
    size_bytes: float = math.nan
    active_leases: float = math.nan


def read_host(runners_dir: Path, lease_file: Path) -> HostReadings:
    out = HostReadings()
    try:
        usage = shutil.disk_usage(runners_dir)
        out.free_bytes, out.size_bytes = usage.free, usage.total
    except OSError:
        pass  # stays NaN
    try:
        out.active_leases = sum(1 for lease in read_leases(lease_file) if not lease.expired())
    except (OSError, ValueError):  # a missing file is no leases; an unreadable or malformed one is unknown
        pass
    return out


def dhcp_pool_size(driver: str, driver_options: dict[str, Any]) -> int:
    if driver != "sim":
        return DEFAULT_DHCP_POOL
    # the sim's options as vm/drivers/sim_options.py reads them (validated there when the VM starts)
    pool, subnet = driver_options.get("pool_size"), driver_options.get("subnet")
    if isinstance(pool, int) and pool > 0:
        return pool
    try:  # the whole subnet less network, gateway and broadcast
        return ipaddress.IPv4Network(str(subnet)).num_addresses - 3 if subnet else DEFAULT_DHCP_POOL
    except ValueError:
        return DEFAULT_DHCP_POOL


def start_kind(runner: Runner) -> str:
    """warm: restored from a warm slot's saved state; cold: booted (also a failed restore's fallback)."""
    return "warm" if runner.restored else "cold"


class AgentMetrics:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = r = CollectorRegistry()
        self.info = Gauge("shoesvz_agent_info", "this agent: 1, labelled with its id, version and driver",
                          ["agent_id", "version", "driver"], registry=r)
        self.runners = Gauge("shoesvz_agent_runners", "runners on this host by phase", ["state"], registry=r)
        self.guest = Gauge("shoesvz_agent_guest_runners", "live runners on this host by the state of the runner "
                           "inside the guest (idle: registered, waiting; running: a job)", ["state"], registry=r)
        self.capacity = Gauge("shoesvz_agent_capacity_runners", "runners this host offers", registry=r)
        self.startup = Histogram(
            "shoesvz_agent_runner_startup_duration_seconds", "startup phases of this host's runners, by template "
            "and start kind (cold boot or warm restore)", ["phase", "template", "start"],
            buckets=STARTUP_BUCKETS, registry=r)
        self.jobs = Histogram("shoesvz_agent_runner_job_duration_seconds", "from the guest's runner taking a job "
                              "to its finishing", ["template"], buckets=JOB_BUCKETS, registry=r)
        self.failures = Counter("shoesvz_agent_runner_failures", "this host's runners that failed, by the phase "
                                "they failed in", ["phase"], registry=r)
        self.reaped = Counter("shoesvz_agent_runners_reaped", "runners this host tore down without myshoes, "
                              "by reason", ["reason"], registry=r)
        self.warm = Gauge("shoesvz_agent_warm_slots", "warm slots on this host by template (state total|free)",
                          ["template", "state"], registry=r)
        self.conditions = Gauge("shoesvz_agent_host_conditions", "1 while this host has the condition "
                                "(core/conditions.py) and gets no new runners", ["reason"], registry=r)
        self.free = Gauge("shoesvz_agent_runners_volume_free_bytes", "free bytes on the runners volume", registry=r)
        self.size = Gauge("shoesvz_agent_runners_volume_size_bytes", "size of the runners volume", registry=r)
        self.leases = Gauge("shoesvz_agent_dhcp_leases_active", "unexpired leases in the DHCP lease file",
                            registry=r)
        self.pool = Gauge("shoesvz_agent_dhcp_pool_addresses", "addresses the DHCP pool hands out", registry=r)
        for phase in FAILABLE:
            self.failures.labels(phase=phase.value)
        for reason in ReapReason:
            if reason is not ReapReason.AGENT_GONE:  # the server's
                self.reaped.labels(reason=reason.value)
        self._job_started: dict[str, float] = {}
        self._phase: dict[str, Phase] = {}

    # -- fed by the agent -------------------------------------------------------------------------
    def runner_changed(self, runner: Runner, now: float) -> None:
        """Every change of a runner (agent/app.py): startup phases once it first runs, the phase a
        failure happened in, a job's duration (the guest's runner from RUNNING to anything else)."""
        rid = runner.runner_id
        before = self._phase.get(rid)
        if runner.phase == Phase.RUNNING and before != Phase.RUNNING:
            self._startup(runner)
        if runner.phase == Phase.ERROR and before in FAILABLE:
            self.failures.labels(phase=before.value).inc()
        if runner.guest_state == GuestState.RUNNING:
            self._job_started.setdefault(rid, now)
        elif rid in self._job_started:
            self.jobs.labels(template=runner.spec.template.name).observe(now - self._job_started.pop(rid))
        if runner.phase == Phase.GONE:
            self._phase.pop(rid, None)
            self._job_started.pop(rid, None)
        else:
            self._phase[rid] = runner.phase

    def _startup(self, runner: Runner) -> None:
        t = runner.timings
        kind = start_kind(runner)
        for phase, value in (("clone", t.clone), ("boot_to_ssh", t.boot_to_ssh), ("total", t.total)):
            if value is not None:
                self.startup.labels(phase=phase, template=runner.spec.template.name, start=kind).observe(value)

    # -- read when scraped ------------------------------------------------------------------------
    def _set_counts(self, gauge: Gauge, values: Iterable[str], keys: Iterable[str]) -> None:
        counts = dict.fromkeys(keys, 0)
        for v in values:
            if v in counts:
                counts[v] += 1
        for k, n in counts.items():
            gauge.labels(state=k).set(n)

    async def refresh(self) -> None:
        a = self.agent
        s = a.settings
        runners = list(a.runners.values())
        self.info.clear()
        self.info.labels(agent_id=a.agent_id, version=__version__, driver=s.driver).set(1)
        phases = (p.value for p in Phase if p is not Phase.GONE)
        self._set_counts(self.runners, (r.phase.value for r in runners), phases)
        live = [r for r in runners if r.live]
        self._set_counts(self.guest, (r.guest_state.value for r in live), (g.value for g in GuestState))
        self.capacity.set(a.capacity)
        self.warm.clear()
        for t in a.templates.list():
            total, free = a.warm_slot_counts(t)
            self.warm.labels(template=t.name, state="total").set(total)
            self.warm.labels(template=t.name, state="free").set(free)
        self.conditions.clear()
        for reason in Reason:
            self.conditions.labels(reason=reason.value).set(0)
        for c in a.conditions.list():
            self.conditions.labels(reason=c.reason).set(1)
        host = await asyncio.to_thread(read_host, s.runners_dir, a.lease_file)
        self.free.set(host.free_bytes)
        self.size.set(host.size_bytes)
        self.leases.set(host.active_leases)
        self.pool.set(dhcp_pool_size(s.driver, s.driver_options))

    async def handle(self, _request: web.Request) -> web.Response:
        await self.refresh()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
