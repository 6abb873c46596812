"""Reaping: the agent tears a runner down by itself, without myshoes' DeleteInstance.

myshoes gives up a delete after 10 failed attempts and never lists what a provider runs, so a runner
it lost would hold one of a Mac's two VM slots for ever. Each rule (`ReapPolicy`) fires once per
runner; the runner's error says which ("reaped (<reason>): …"), the server keeps it in the runner's
row and marks the row gone, so a later DeleteInstance answers NOT_FOUND — done, for myshoes. A VM
process that dies is the fourth reason; the runner's own watcher reaps it (runner.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoes_vz.config import AgentSettings
from shoes_vz.core.states import REGISTERED_STATES, GuestState, Phase, ReapReason

if TYPE_CHECKING:
    from shoes_vz.agent.runner import Runner


@dataclass(frozen=True)
class GuestSeen:
    """What the agent saw of one runner's guest, as the rules need it (wall-clock seconds)."""

    created_at: float
    polled: bool                  # /status was asked at least once since this agent tracks it
    registered_at: float | None   # first seen IDLE (or beyond)
    finished_at: float | None     # first seen FINISHED
    state: GuestState


@dataclass(frozen=True)
class ReapPolicy:
    finished_after: float
    registration_timeout: float
    max_lifetime: float

    @classmethod
    def of(cls, s: AgentSettings) -> ReapPolicy:
        return cls(s.reap_finished_after, s.registration_timeout, s.max_lifetime)

    def due(self, seen: GuestSeen, now: float | None = None) -> tuple[ReapReason, str] | None:
        """The first rule this runner breaks now, with the words for its record; None: keep it."""
        now = time.time() if now is None else now
        age = now - seen.created_at
        if self.max_lifetime and age > self.max_lifetime:
            return ReapReason.MAX_LIFETIME, f"{age:.0f}s old, above agent.max_lifetime ({self.max_lifetime:g}s)"
        if self.finished_after and seen.finished_at is not None and now - seen.finished_at >= self.finished_after:
            return ReapReason.FINISHED, (f"the guest's runner finished {now - seen.finished_at:.0f}s ago and "
                                         f"was not deleted within agent.reap_finished_after "
                                         f"({self.finished_after:g}s)")
        if (self.registration_timeout and seen.polled and seen.registered_at is None
                and age > self.registration_timeout):
            return ReapReason.REGISTRATION_TIMEOUT, (
                f"the guest's runner did not reach IDLE within agent.registration_timeout "
                f"({self.registration_timeout:g}s; it is {seen.state})")
        return None


def registered(state: GuestState) -> bool:
    return state in REGISTERED_STATES


async def keep_reaping(runners: Callable[[], Iterable[Runner]], policy: ReapPolicy, interval: float) -> None:
    """Every `interval`, tear down each running runner a rule says is due (the agent's task)."""
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        for r in list(runners()):
            if r.phase == Phase.RUNNING and (due := policy.due(r.seen(), now)) is not None:
                r.reap(*due)


__all__ = ["GuestSeen", "ReapPolicy", "keep_reaping", "registered"]
