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


class ReapReason(StrEnum):
    """Why a runner was torn down without myshoes asking (agent/reaper.py, server/reaper.py)."""

    FINISHED = "finished"                  # the guest's runner finished and myshoes did not delete it in time
    REGISTRATION_TIMEOUT = "registration_timeout"  # the guest's runner never reached IDLE
    MAX_LIFETIME = "max_lifetime"          # older than agent.max_lifetime
    VM_DIED = "vm_died"                    # its VM process exited
    AGENT_GONE = "agent_gone"              # the server: its agent was gone longer than reap_after_agent_gone


# the guest runner states that mean it registered with GitHub (it reached IDLE, perhaps on to a job)
REGISTERED_STATES = frozenset({GuestState.IDLE, GuestState.RUNNING, GuestState.FINISHED})
