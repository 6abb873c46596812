"""The VM-limit leak: a host whose framework refuses VMs it should allow is degraded until a probe
VM starts again.

Virtualization.framework refuses a start for capacity ("the number of VMs exceeds the system limit")
also while fewer VMs than its limit run: a VM outside shoes-vz holds a slot, `host_vm_limit` is above
Apple's 2, or — tart and orchard users report it on macOS 26 after many sequential runs — the host
leaked its VM quota after guest shutdowns, which only a reboot clears. The vm process tells this
apart from a full host (`VMExit.HOST_QUOTA`). The agent then marks itself degraded: a host condition
(out of placement; in `shoes-vz status`, its /metrics and the server's view, with the remedies), so
it takes no runners, and it probes — a VM of its first template, booted to SSH and torn down, after
`degraded_probe_after`, then twice as long each time up to 10 minutes. When one boots, the host
returns to service by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoes_vz.core.conditions import HostConditions, Reason

log = logging.getLogger(__name__)
PROBE_CAP = 600.0
REMEDIES = ("stop any VM running outside shoes-vz (tart, UTM, Parallels, another user's); keep "
            "agent.host_vm_limit at 2 (Apple's limit for macOS guests); if neither, the host leaked its VM "
            "quota after guest shutdowns and only a reboot clears it")

# a probe: True when a VM started (booted to SSH), else False and why
Probe = Callable[[], Awaitable[tuple[bool, str]]]


class Degraded:
    def __init__(self, conditions: HostConditions, on_change: Callable[[], None], probe: Probe,
                 first: float, cap: float = PROBE_CAP) -> None:
        self.conditions = conditions
        self.on_change = on_change
        self.probe = probe
        self.first = first
        self.cap = max(cap, first)
        self.probes = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def enter(self, why: str) -> None:
        """The framework refused a VM for capacity below its limit: out of service, probing."""
        message = f"{why}; remedies: {REMEDIES} (the agent probes and returns to service by itself)"
        if self.conditions.set(Reason.DEGRADED, message):
            log.error("host degraded: no new runners here until a probe VM starts: %s", message)
            self.on_change()
        if not self.active:
            self._task = asyncio.create_task(self._probe_until_a_vm_starts(), name="degraded-probe")

    async def _probe_until_a_vm_starts(self) -> None:
        delay = self.first
        while True:
            await asyncio.sleep(delay)
            self.probes += 1
            ok, why = await self.probe()
            if ok:
                break
            delay = min(self.cap, delay * 2)
            log.warning("host still degraded: probe VM %d did not start (%s); next probe in %.0fs",
                        self.probes, why, delay)
        if self.conditions.clear(Reason.DEGRADED):
            log.info("host back in service: probe VM %d started", self.probes)
            self.on_change()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


__all__ = ["REMEDIES", "Degraded", "Probe"]
