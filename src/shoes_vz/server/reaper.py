"""The server's reaping: the runners of an agent gone too long are given up.

An agent that does not come back (a host retired, its disk lost) would keep its runners live in the
database for ever, and myshoes' deletes of them would fail until it gave up — each one counting
against the fleet. After `reap_after_agent_gone` they are gone here: DeleteInstance answers NOT_FOUND
(done, for myshoes), and should the agent come back still running one, its report of a runner this
server holds as gone is answered with a delete (agent_service's orphan rule), so the VM goes too.
"Gone" counts from this server's start at the earliest: a server that was down itself saw nothing.
"""

from __future__ import annotations

import logging
import time

from shoes_vz.core.states import ReapReason
from shoes_vz.server.store import Store

log = logging.getLogger(__name__)


class AgentReaper:
    def __init__(self, store: Store, after: float, started_at: float | None = None) -> None:
        self.store = store
        self.after = after
        self.started_at = time.time() if started_at is None else started_at

    async def reap(self, connected: set[str], now: float | None = None) -> list[str]:
        """Reap the runners of every agent gone longer than `after`; the runner ids reaped."""
        if not self.after:
            return []
        now = time.time() if now is None else now
        reaped = []
        for agent in await self.store.call(self.store.agents):
            gone_since = max(agent.last_seen, self.started_at)
            if agent.agent_id in connected or agent.online or now - gone_since < self.after:
                continue
            for row in await self.store.call(self.store.live_runners, agent.agent_id):
                error = (f"reaped ({ReapReason.AGENT_GONE}): agent {agent.agent_id} ({agent.hostname}) gone "
                         f"{now - gone_since:.0f}s, above server.reap_after_agent_gone ({self.after:g}s)")
                if await self.store.call(self.store.reap_runner, row.runner_id, error):
                    log.warning("runner %s (%s) %s", row.runner_id, row.runner_name, error)
                    reaped.append(row.runner_id)
        return reaped
