"""The agent's /metrics (DESIGN §10), for its own runners."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shoes_vz.core.states import Phase, ReapReason

STARTUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class AgentMetrics:
    def __init__(self, phases: Callable[[], Iterable[Phase]], capacity: int,
                 free_bytes: Callable[[], int] | None = None,
                 conditions: Callable[[], Iterable[str]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.phases = phases
        self.free_bytes = free_bytes
        self.conditions = conditions
        self.host_conditions = Gauge("shoesvz_host_conditions", "this host's conditions now (out of placement "
                                     "while any), by reason: degraded, disk_below_reserve, …", ["reason"],
                                     registry=self.registry)
        self.volume_free = Gauge("shoesvz_runners_volume_free_bytes", "free bytes of the runners volume "
                                 "(agent.disk_reserve must stay free)", registry=self.registry)
        self.runners = Gauge("shoesvz_runners_total", "runners on this agent by state", ["state"],
                             registry=self.registry)
        cap = Gauge("shoesvz_capacity_total_runners", "runner slots on this agent", registry=self.registry)
        cap.set(capacity)
        self.startup = Histogram(
            "shoesvz_runner_startup_duration_seconds", "runner startup phases", ["phase"],
            buckets=STARTUP_BUCKETS, registry=self.registry,
        )
        self.reaped = Counter("shoesvz_runners_reaped", "runners this agent tore down without myshoes, by reason "
                              "(agent/reaper.py)", ["reason"], registry=self.registry)
        for reason in ReapReason:
            if reason is not ReapReason.AGENT_GONE:  # the server's
                self.reaped.labels(reason=reason.value)

    def observe(self, clone: float | None, boot_to_ssh: float | None, total: float | None) -> None:
        for phase, value in (("clone", clone), ("boot_to_ssh", boot_to_ssh), ("total", total)):
            if value is not None:
                self.startup.labels(phase=phase).observe(value)

    async def handle(self, _request: web.Request) -> web.Response:
        counts = dict.fromkeys((p for p in Phase if p is not Phase.GONE), 0)
        for p in self.phases():
            if p in counts:
                counts[p] += 1
        for p, n in counts.items():
            self.runners.labels(state=p.value).set(n)
        if self.conditions is not None:
            self.host_conditions.clear()
            for reason in self.conditions():
                self.host_conditions.labels(reason=reason).set(1)
        if self.free_bytes is not None:
            try:
                self.volume_free.set(await asyncio.to_thread(self.free_bytes))
            except OSError:  # the runners directory is gone: the agent's conditions say so
                self.volume_free.set(float("nan"))
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
