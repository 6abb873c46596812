"""The runner lifecycle table: every (phase, event) pair is either a listed transition or refused."""

from __future__ import annotations

import itertools

import pytest

from shoes_vz.agent.lifecycle import TRANSITIONS, Event, IllegalTransition, advance
from shoes_vz.core.states import LIVE_PHASES, Phase


def test_happy_path() -> None:
    p = Phase.CREATING
    for event, expected in [(Event.CLONED, Phase.BOOTING), (Event.SSH_READY, Phase.SSH_READY),
                            (Event.SETUP_STARTED, Phase.RUNNING), (Event.DELETE, Phase.TEARING_DOWN),
                            (Event.TORN_DOWN, Phase.GONE)]:
        p = advance(p, event)
        assert p == expected


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(Phase, Event)))
def test_every_pair_is_defined_or_refused(phase: Phase, event: Event) -> None:
    if (phase, event) in TRANSITIONS:
        assert advance(phase, event) == TRANSITIONS[(phase, event)]
    else:
        with pytest.raises(IllegalTransition):
            advance(phase, event)


@pytest.mark.parametrize("phase", sorted(LIVE_PHASES))
def test_every_live_phase_reaches_error_then_teardown_then_gone(phase: Phase) -> None:
    p = advance(phase, Event.FAILED)
    assert p == Phase.ERROR
    p = advance(p, Event.DELETE)
    assert p == Phase.TEARING_DOWN
    assert advance(p, Event.TORN_DOWN) == Phase.GONE


def test_gone_is_final() -> None:
    assert not [k for k in TRANSITIONS if k[0] == Phase.GONE]


def test_no_skipping_ssh_ready() -> None:
    with pytest.raises(IllegalTransition):
        advance(Phase.BOOTING, Event.SETUP_STARTED)
