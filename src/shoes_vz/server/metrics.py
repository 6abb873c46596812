"""The server's /metrics with the names of DESIGN §10."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shoes_vz.core.states import Phase, ReapReason
from shoes_vz.server.store import AgentRow, Store

STARTUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = r = CollectorRegistry()
        self.agents_online = Gauge("shoesvz_agents_online", "agents connected now", registry=r)
        self.agents_total = Gauge("shoesvz_agents_total", "known agents by status", ["status"], registry=r)
        self.runners_total = Gauge("shoesvz_runners_total", "live runners by state", ["state"], registry=r)
        self.capacity = Gauge("shoesvz_capacity_total_runners", "runner slots on online agents", registry=r)
        self.template_agents = Gauge("shoesvz_template_agents", "agents holding a template, by status",
                                     ["template", "status"], registry=r)
        self.template_warm = Gauge("shoesvz_template_warm_slots", "warm slots for a template on online agents",
                                   ["template", "state"], registry=r)
        self.out_of_placement = Gauge("shoesvz_agents_out_of_placement", "online agents with a host condition, "
                                      "by reason (core/conditions.py)", ["reason"], registry=r)
        self.startup = Histogram("shoesvz_runner_startup_duration_seconds", "runner startup phases", ["phase"],
                                 buckets=STARTUP_BUCKETS, registry=r)
        # the server's own reaps; an agent counts its own (shoesvz_runners_reaped_total on the agent's /metrics)
        self.reaped = Counter("shoesvz_runners_reaped", "runners the server gave up without myshoes, by reason "
                              "(server/reaper.py)", ["reason"], registry=r)
        self.reaped.labels(reason=ReapReason.AGENT_GONE.value)

    def observe(self, timings: dict[str, float]) -> None:
        for phase in ("clone", "boot_to_ssh", "total"):
            value = timings.get(phase)
            if value:
                self.startup.labels(phase=phase).observe(value)

    async def refresh(self) -> None:
        agents = await self.store.call(self.store.agents)
        counts = await self.store.call(self.store.runner_counts)
        online = [a for a in agents if a.online]
        self.agents_online.set(len(online))
        self.agents_total.labels(status="online").set(len(online))
        self.agents_total.labels(status="offline").set(len(agents) - len(online))
        self.capacity.set(sum(a.max_runners for a in online))
        for p in Phase:
            if p is not Phase.GONE:
                self.runners_total.labels(state=p.value).set(counts.get(p.value, 0))
        self._templates(agents)
        self.out_of_placement.clear()
        for a in online:
            for c in a.conditions:
                self.out_of_placement.labels(reason=c.reason).inc()

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
