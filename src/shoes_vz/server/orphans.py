"""`OrphanDeletes`: delete commands for runners an agent runs that the server does not know.

An orphan (a VM left from before a database was lost, or a runner deleted meanwhile) is reported
on every Sync message until it is gone, so its delete needs no durable intent: it is sent to that
agent only, at most once per `resend_after` per runner, and never written to the outbox — forged
orphan reports cannot grow the store. What is remembered is the orphans of each agent's latest
report (a report holds at most `limits.MAX_RUNNERS_PER_REPORT`), so memory is bounded too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shoes_vz.server.limits import MAX_RUNNERS_PER_REPORT
from shoes_vz.server.scheduler import new_request_id
from shoes_vz.server.store import Command


class OrphanDeletes:
    def __init__(self, resend_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.resend_after = resend_after
        self.clock = clock
        self._sent: dict[str, dict[str, float]] = {}  # agent id → orphan runner id → sent at

    def due(self, agent_id: str, orphans: list[str]) -> tuple[list[Command], list[str]]:
        """The delete commands to send now for this report's `orphans`, and which of them are new."""
        now = self.clock()
        before = self._sent.get(agent_id, {})
        kept: dict[str, float] = {}
        commands, new = [], []
        for runner_id in dict.fromkeys(orphans[:MAX_RUNNERS_PER_REPORT]):
            sent_at = before.get(runner_id)
            if sent_at is not None and now - sent_at < self.resend_after:
                kept[runner_id] = sent_at
                continue
            if sent_at is None:
                new.append(runner_id)
            kept[runner_id] = now
            commands.append(Command(new_request_id(), agent_id, runner_id, "delete", {}))
        if kept:
            self._sent[agent_id] = kept
        else:
            self._sent.pop(agent_id, None)
        return commands, new

    def forget(self, agent_id: str) -> None:
        self._sent.pop(agent_id, None)


__all__ = ["OrphanDeletes"]
