"""The runner lifecycle (DESIGN §4) as one table. `runner.py` carries out the effects.

creating → booting → ssh-ready → running → tearing-down → gone; any live phase → error →
tearing-down. Never repair: an error is destroyed and myshoes retries.
"""

from __future__ import annotations

from enum import StrEnum

from shoes_vz.core.states import Phase


class Event(StrEnum):
    CLONED = "cloned"                # bundle complete, VM process started
    SSH_READY = "ssh-ready"          # key-auth `true` succeeded with the pinned host key
    SETUP_STARTED = "setup-started"  # setup_script started detached in the guest
    FAILED = "failed"                # a step failed or timed out; the VM process died
    DELETE = "delete"                # the server asked for the runner to go
    TORN_DOWN = "torn-down"          # VM process stopped and bundle removed


_LIVE = (Phase.CREATING, Phase.BOOTING, Phase.SSH_READY, Phase.RUNNING)

TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.CREATING, Event.CLONED): Phase.BOOTING,
    (Phase.BOOTING, Event.SSH_READY): Phase.SSH_READY,
    (Phase.SSH_READY, Event.SETUP_STARTED): Phase.RUNNING,
    **{(p, Event.FAILED): Phase.ERROR for p in _LIVE},
    **{(p, Event.DELETE): Phase.TEARING_DOWN for p in (*_LIVE, Phase.ERROR)},
    (Phase.ERROR, Event.FAILED): Phase.ERROR,
    (Phase.TEARING_DOWN, Event.DELETE): Phase.TEARING_DOWN,
    (Phase.TEARING_DOWN, Event.FAILED): Phase.TEARING_DOWN,
    (Phase.TEARING_DOWN, Event.TORN_DOWN): Phase.GONE,
}


class IllegalTransition(Exception):
    def __init__(self, phase: Phase, event: Event) -> None:
        super().__init__(f"no transition from {phase} on {event}")
        self.phase = phase
        self.event = event


def advance(phase: Phase, event: Event) -> Phase:
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise IllegalTransition(phase, event) from None
