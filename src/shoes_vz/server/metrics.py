"""The server's /metrics: the fleet, every name `shoesvz_…` (docs/operations.md §metrics).

DESIGN §10's five names (`shoesvz_agents_online`, `shoesvz_agents_total`, `shoesvz_runners_total`,
`shoesvz_capacity_total_runners`, `shoesvz_runner_startup_duration_seconds{phase}`) are upstream's
dashboards' contract and stay as they are, although two gauges end in `_total`. Every other name
follows Prometheus' conventions. An agent's own /metrics uses `shoesvz_agent_…` only, so the two
never count one runner twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shoes_vz.core.conditions import Reason
from shoes_vz.core.states import LIVE_PHASES, GuestState, Phase, ReapReason
from shoes_vz.server.store import AgentRow, RunnerRow, Store

STARTUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
REQUEST_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)
# the codes ShoesService answers (server/shoes_service.py), shown at 0 before the first
CODES = ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND",
         "PERMISSION_DENIED", "UNAUTHENTICATED", "CANCELLED", "UNKNOWN")
# why a runner failed, seen from the server: refused by its agent (for capacity or otherwise), not
# ready within AddInstance's time, or reported failed by its agent — in which step the timings it
# reported tell: no clone yet, cloned but never SSH-ready, or after SSH (setup_script, the job)
FAILURE_REASONS = ("refused_capacity", "refused", "not_ready_in_time", "failed_creating", "failed_booting",
                   "failed_after_ssh")


def failure_reason(timings: dict[str, float]) -> str:
    """The step a runner its agent reported as ERROR failed in, from the timings it reported."""
    if not timings.get("clone"):
        return "failed_creating"
    return "failed_after_ssh" if timings.get("boot_to_ssh") else "failed_booting"


class ServerMetrics:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = r = CollectorRegistry()
        # DESIGN §10
        self.agents_online = Gauge("shoesvz_agents_online", "agents connected now", registry=r)
        self.agents_total = Gauge("shoesvz_agents_total", "known agents by status", ["status"], registry=r)
        self.runners_total = Gauge("shoesvz_runners_total", "live runners by state", ["state"], registry=r)
        self.capacity = Gauge("shoesvz_capacity_total_runners", "runner slots on online agents", registry=r)
        self.startup = Histogram("shoesvz_runner_startup_duration_seconds", "runner startup phases", ["phase"],
                                 buckets=STARTUP_BUCKETS, registry=r)
        # upstream's other names, with its meaning
        self.idle = Gauge("shoesvz_runners_idle", "live runners whose guest runner is registered and waiting",
                          registry=r)
        self.busy = Gauge("shoesvz_runners_busy", "live runners whose guest runner runs a job", registry=r)
        self.jobs = Histogram("shoesvz_runner_job_duration_seconds", "from a guest's runner taking its job to "
                              "finishing it", buckets=JOB_BUCKETS, registry=r)
        self.agent_capacity = Gauge("shoesvz_agents_capacity_runners", "runner slots an online agent offers",
                                    ["agent_id", "hostname"], registry=r)
        self.agent_current = Gauge("shoesvz_agents_current_runners", "live runners on an online agent",
                                   ["agent_id", "hostname"], registry=r)
        self.available = Gauge("shoesvz_capacity_available_runners", "free runner slots on online agents that "
                               "take new runners (not drained, no host condition)", registry=r)
        self.utilization = Gauge("shoesvz_capacity_utilization_ratio", "live runners / runner slots on online "
                                 "agents", registry=r)
        self.failures = Counter("shoesvz_runner_failures", "runners that failed, by reason", ["reason"], registry=r)
        self.add_requests = Counter("shoesvz_add_instance_requests", "AddInstance calls by gRPC code", ["code"],
                                    registry=r)
        self.delete_requests = Counter("shoesvz_delete_instance_requests", "DeleteInstance calls by gRPC code",
                                       ["code"], registry=r)
        self.add_duration = Histogram("shoesvz_add_instance_duration_seconds", "AddInstance time to answer",
                                      ["code"], buckets=REQUEST_BUCKETS, registry=r)
        self.delete_duration = Histogram("shoesvz_delete_instance_duration_seconds", "DeleteInstance time to "
                                         "answer", ["code"], buckets=REQUEST_BUCKETS, registry=r)
        # ours
        self.template_agents = Gauge("shoesvz_template_agents", "agents holding a template, by status",
                                     ["template", "status"], registry=r)
        self.template_warm = Gauge("shoesvz_template_warm_slots", "warm slots for a template on online agents",
                                   ["template", "state"], registry=r)
        self.out_of_placement = Gauge("shoesvz_agents_out_of_placement", "online agents with a host condition, "
                                      "by reason (core/conditions.py)", ["reason"], registry=r)
        self.drained = Gauge("shoesvz_agents_drained", "online agents an operator drained", registry=r)
        # the server's own reaps; an agent counts its own (shoesvz_agent_runners_reaped_total)
        self.reaped = Counter("shoesvz_runners_reaped", "runners the server gave up without myshoes, by reason",
                              ["reason"], registry=r)
        self.reaped.labels(reason=ReapReason.AGENT_GONE.value)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        for code in CODES:
            self.add_requests.labels(code=code)
            self.delete_requests.labels(code=code)
        self._job_started: dict[str, float] = {}

    # -- fed as things happen ---------------------------------------------------------------------
    def observe(self, timings: dict[str, float]) -> None:
        for phase in ("clone", "boot_to_ssh", "total"):
            value = timings.get(phase)
            if value:
                self.startup.labels(phase=phase).observe(value)

    def runner_reported(self, row: RunnerRow, error: str, guest_state: str, timings: dict[str, float],
                        now: float) -> None:
        """An agent's report of a runner the server had as `row`. A failure is the first report with
        an error (reports coalesce: the server may see ERROR, or only the teardown after it)."""
        if error and not row.error:
            self.failures.labels(reason=failure_reason(timings)).inc()
        if guest_state == GuestState.RUNNING.value:
            self._job_started.setdefault(row.runner_id, now)
        elif row.runner_id in self._job_started:
            self.jobs.observe(now - self._job_started.pop(row.runner_id))

    def runner_gone(self, runner_id: str) -> None:
        self._job_started.pop(runner_id, None)

    @asynccontextmanager
    async def request(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Count a ShoesService call and time it, by the code it answered."""
        started = time.monotonic()
        code = "UNKNOWN"
        try:
            yield
            code = "OK"
        except asyncio.CancelledError:  # the caller went away (myshoes' deadline, a killed plugin)
            code = "CANCELLED"
            raise
        finally:
            if code not in ("OK", "CANCELLED"):
                answered = context.code()
                code = answered.name if isinstance(answered, grpc.StatusCode) else "UNKNOWN"
            counter, hist = ((self.add_requests, self.add_duration) if method == "add"
                             else (self.delete_requests, self.delete_duration))
            counter.labels(code=code).inc()
            hist.labels(code=code).observe(time.monotonic() - started)

    # -- read when scraped ------------------------------------------------------------------------
    async def refresh(self) -> None:
        agents = await self.store.call(self.store.agents)
        live = await self.store.call(self.store.live_runners)
        counts: dict[str, int] = {}
        for run in live:
            counts[run.state] = counts.get(run.state, 0) + 1
        online = [a for a in agents if a.online]
        self.agents_online.set(len(online))
        self.agents_total.labels(status="online").set(len(online))
        self.agents_total.labels(status="offline").set(len(agents) - len(online))
        for p in Phase:
            if p is not Phase.GONE:
                self.runners_total.labels(state=p.value).set(counts.get(p.value, 0))
        serving = [run for run in live if run.state in LIVE_PHASES]
        self.idle.set(sum(1 for run in serving if run.guest_state == GuestState.IDLE.value))
        self.busy.set(sum(1 for run in serving if run.guest_state == GuestState.RUNNING.value))
        self._capacity(online, live)
        self._templates(agents)
        self.out_of_placement.clear()
        for reason in Reason:  # shown at 0: an alert's series exists before the first host has one
            self.out_of_placement.labels(reason=reason.value)
        for a in online:
            for c in a.conditions:
                self.out_of_placement.labels(reason=c.reason).inc()
        self.drained.set(sum(1 for a in online if a.drained))

    def _capacity(self, online: list[AgentRow], live: list[RunnerRow]) -> None:
        per_agent: dict[str, int] = {}
        for run in live:  # a runner holds its slot until it is gone (tearing down and failed ones too)
            per_agent[run.agent_id] = per_agent.get(run.agent_id, 0) + 1
        total = sum(a.max_runners for a in online)
        used = sum(per_agent.get(a.agent_id, 0) for a in online)
        self.capacity.set(total)
        self.agent_capacity.clear()
        self.agent_current.clear()
        now = time.time()
        available = 0
        for a in online:
            current = per_agent.get(a.agent_id, 0)
            self.agent_capacity.labels(agent_id=a.agent_id, hostname=a.hostname).set(a.max_runners)
            self.agent_current.labels(agent_id=a.agent_id, hostname=a.hostname).set(current)
            if not a.conditions and not a.drained and a.blocked_until <= now:
                available += max(0, a.max_runners - current)
        self.available.set(available)
        self.utilization.set(used / total if total else 0.0)

    def _templates(self, agents: list[AgentRow]) -> None:
        """Which templates the fleet can serve now (a template gone from every host drops out)."""
        self.template_agents.clear()
        self.template_warm.clear()
        for a in agents:
            for t in a.templates:
                status = "online" if a.online else "offline"
                self.template_agents.labels(template=t.name, status=status).inc()
                self.template_warm.labels(template=t.name, state="total").inc(t.warm_slots if a.online else 0)
                self.template_warm.labels(template=t.name, state="free").inc(t.free_warm_slots if a.online else 0)

    async def handle(self, _request: web.Request) -> web.Response:
        await self.refresh()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
