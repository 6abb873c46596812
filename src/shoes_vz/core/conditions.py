"""Host conditions: why a host should get no new runners now.

An agent reports a small typed list of (reason, message, since) with its Sync stream; the server
keeps it with the agent, logs each change once, and the scheduler places nothing on a host that has
any. A condition is found where it shows — a runner's clone failing on a full or broken volume —
and cleared by the agent's own re-check, never by a guess. Reasons are strings on the wire, so a
server keeps (and honours) reasons a newer agent adds: disk below a reserve, a VM-limit leak
("degraded"), an operator's drain.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from enum import StrEnum

from shoes_vz.core.errors import DiskBelowReserve


class Reason(StrEnum):
    CLONE_FAILED = "clone_failed"  # the runners directory stopped cloning templates (volume, permissions)
    DISK_FULL = "disk_full"        # no space left on the runners volume
    DISK_RESERVE = "disk_below_reserve"  # the runners volume's free space is below agent.disk_reserve
    DEGRADED = "degraded"          # the framework refuses VMs below its limit (agent/degraded.py)


@dataclass(frozen=True)
class HostCondition:
    reason: str
    message: str
    since: float

    def describe(self) -> str:
        return f"{self.reason}: {self.message}"


# errnos of a failed clone or bundle write that are the host's, not the template's or the runner's
_FULL = {errno.ENOSPC, errno.EDQUOT}
_BROKEN = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTTY, errno.EACCES, errno.EPERM,
           errno.EROFS, errno.EIO}


def reason_for(e: BaseException) -> Reason | None:
    """The condition an error while making a bundle means for the host, if any."""
    if isinstance(e, DiskBelowReserve):
        return Reason.DISK_RESERVE
    os_error = e if isinstance(e, OSError) else e.__cause__ if isinstance(e.__cause__, OSError) else None
    code = os_error.errno if os_error is not None else None
    if code in _FULL:
        return Reason.DISK_FULL
    if code in _BROKEN:
        return Reason.CLONE_FAILED
    return None


class HostConditions:
    """The conditions one host has now (the agent's side)."""

    def __init__(self) -> None:
        self._now: dict[str, HostCondition] = {}

    def set(self, reason: str, message: str) -> bool:
        """True when this changed the list (a new reason, or a new message for one)."""
        old = self._now.get(reason)
        if old is not None and old.message == message:
            return False
        self._now[reason] = HostCondition(reason, message, old.since if old is not None else time.time())
        return True

    def clear(self, *reasons: str) -> bool:
        return bool([self._now.pop(r) for r in reasons if r in self._now])

    def list(self) -> list[HostCondition]:
        return [self._now[r] for r in sorted(self._now)]

    def __bool__(self) -> bool:
        return bool(self._now)


__all__ = ["HostCondition", "HostConditions", "Reason", "reason_for"]
