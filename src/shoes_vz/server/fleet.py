"""The fleet as an operator sees it: one set of store queries behind AdminService, `shoes-vz agents` /
`runners` and the status page, so that the three never disagree.

Every method is synchronous and runs on the store's thread (`store.call(fleet.agents)`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from shoes_vz.core import ids
from shoes_vz.core.conditions import HostCondition
from shoes_vz.core.timings import percentile
from shoes_vz.server.store import AgentRow, HeldTemplate, RunnerRow, Store, _runner

PHASES = ("clone", "boot_to_ssh", "total")  # the startup timings an agent reports (agent.proto PhaseTimings)
GONE_LIMIT = 100
STARTUP_WINDOW = 24 * 3600.0  # the status page's startup percentiles: runners created this recently


@dataclass(frozen=True)
class AgentView:
    agent_id: str
    hostname: str
    driver: str
    agent_version: str
    os: str
    arch: str
    online: bool
    drained_since: float | None
    conditions: list[HostCondition]  # every reason it is out of placement now, the drain included
    max_runners: int
    runners: int                     # live runners placed on it: what the scheduler counts against max_runners
    templates: list[HeldTemplate]
    last_seen: float

    @property
    def drained(self) -> bool:
        return self.drained_since is not None

    @property
    def status(self) -> str:
        return "online" if self.online else "offline"


@dataclass(frozen=True)
class StartupStat:
    template: str
    phase: str
    count: int
    p50: float
    p95: float


@dataclass(frozen=True)
class Summary:
    """What the status page shows besides the two lists."""

    failures: list[RunnerRow] = field(default_factory=list)
    startup: list[StartupStat] = field(default_factory=list)


class Fleet:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- agents ---------------------------------------------------------------------------------
    def agents(self) -> list[AgentView]:
        db = self.store.db
        hosts = {r[0]: json.loads(r[1] or "{}") for r in db.execute("SELECT agent_id, host FROM agents")}
        load = {r[0]: r[1] for r in db.execute(
            "SELECT agent_id, COUNT(*) FROM runners WHERE deleted_at IS NULL GROUP BY agent_id")}
        return [self._view(a, hosts.get(a.agent_id, {}), load.get(a.agent_id, 0)) for a in self.store.agents()]

    def agent(self, agent_id: str) -> AgentView | None:
        return next((a for a in self.agents() if a.agent_id == agent_id), None)

    @staticmethod
    def _view(a: AgentRow, host: dict[str, str], runners: int) -> AgentView:
        return AgentView(
            agent_id=a.agent_id, hostname=a.hostname, driver=str(host.get("driver", "")),
            agent_version=str(host.get("agent_version", "")), os=str(host.get("os", "")),
            arch=str(host.get("arch", "")), online=a.online, drained_since=a.drained_since,
            conditions=a.out_of_placement(), max_runners=a.max_runners, runners=runners, templates=a.templates,
            last_seen=a.last_seen)

    def set_drained(self, agent_id: str, drained: bool) -> bool | None:
        """Drain or undrain a registered agent; True when that changed it, None when there is no such agent.
        Stored apart from the agent's own reports, so it outlives restarts of the server and the agent."""
        db = self.store.db
        if db.execute("SELECT 1 FROM agents WHERE agent_id=?", (agent_id,)).fetchone() is None:
            return None
        if drained:
            cur = db.execute("INSERT OR IGNORE INTO drains (agent_id, since) VALUES (?, ?)", (agent_id, time.time()))
        else:
            cur = db.execute("DELETE FROM drains WHERE agent_id=?", (agent_id,))
        return cur.rowcount == 1

    # -- runners --------------------------------------------------------------------------------
    def runners(self, include_gone: bool = False, agent_id: str = "", limit: int = GONE_LIMIT) -> list[RunnerRow]:
        """Live runners (oldest first), then, when asked, gone ones (newest first, up to `limit`)."""
        where, args = ("AND agent_id=?", (agent_id,)) if agent_id else ("", ())
        db = self.store.db
        rows = [_runner(r) for r in db.execute(
            f"SELECT * FROM runners WHERE deleted_at IS NULL {where} ORDER BY created_at", args)]
        if include_gone:
            rows += [_runner(r) for r in db.execute(
                f"SELECT * FROM runners WHERE deleted_at IS NOT NULL {where} ORDER BY deleted_at DESC LIMIT ?",
                (*args, limit or GONE_LIMIT))]
        return rows

    def find_runner(self, ref: str) -> RunnerRow | None:
        """A runner by id, cloud id (`shoes-vz-<id>`) or the name of a live one."""
        runner_id = ids.runner_id_from_cloud_id(ref) or ref
        row = self.store.runner(runner_id)
        return row if row is not None else self.store.live_runner_by_name(ref)

    def failures(self, limit: int = 20) -> list[RunnerRow]:
        """The newest runners that failed (an error on the row), live or gone."""
        return [_runner(r) for r in self.store.db.execute(
            "SELECT * FROM runners WHERE error != '' ORDER BY updated_at DESC LIMIT ?",
            (limit,))]

    def startup(self, window: float = STARTUP_WINDOW) -> list[StartupStat]:
        """P50/P95 of each startup phase per template, over runners created within `window` that got ready."""
        by: dict[tuple[str, str], list[float]] = {}
        for template, timings in self.store.db.execute(
                "SELECT template, timings FROM runners WHERE created_at >= ? AND "
                "json_extract(timings, '$.total') > 0", (time.time() - window,)):
            for phase, value in json.loads(timings).items():
                if phase in PHASES and value and value > 0:
                    by.setdefault((template, phase), []).append(float(value))
        stats = []
        for (template, phase), values in sorted(by.items(), key=lambda kv: (kv[0][0], PHASES.index(kv[0][1]))):
            p50, p95 = percentile(values, 50), percentile(values, 95)
            assert p50 is not None and p95 is not None
            stats.append(StartupStat(template, phase, len(values), p50, p95))
        return stats

    def summary(self) -> Summary:
        return Summary(failures=self.failures(), startup=self.startup())


__all__ = ["AgentView", "Fleet", "StartupStat", "Summary"]
