"""Runner phases (host side) and guest runner states, as plain enums."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    CREATING = "creating"
    BOOTING = "booting"
    SSH_READY = "ssh-ready"
    RUNNING = "running"
    TEARING_DOWN = "tearing-down"
    ERROR = "error"
    GONE = "gone"


LIVE_PHASES = frozenset({Phase.CREATING, Phase.BOOTING, Phase.SSH_READY, Phase.RUNNING})


class GuestState(StrEnum):
    UNSPECIFIED = "unspecified"
    OFFLINE = "offline"
    IDLE = "idle"
    PREPARING = "preparing"
    RUNNING = "running"
    FINISHED = "finished"
