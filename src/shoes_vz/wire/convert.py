"""Conversions between wire enums and messages and core types. The only module that maps them."""

from __future__ import annotations

from shoes_vz.core.conditions import HostCondition
from shoes_vz.core.states import GuestState, Phase
from shoes_vz.wire import agent_pb2 as pb

PHASE_TO_STATE: dict[Phase, pb.RunnerState.ValueType] = {
    Phase.CREATING: pb.RUNNER_STATE_CREATING,
    Phase.BOOTING: pb.RUNNER_STATE_BOOTING,
    Phase.SSH_READY: pb.RUNNER_STATE_SSH_READY,
    Phase.RUNNING: pb.RUNNER_STATE_RUNNING,
    Phase.TEARING_DOWN: pb.RUNNER_STATE_TEARING_DOWN,
    Phase.ERROR: pb.RUNNER_STATE_ERROR,
    Phase.GONE: pb.RUNNER_STATE_UNSPECIFIED,
}
STATE_TO_PHASE: dict[pb.RunnerState.ValueType, Phase] = {v: k for k, v in PHASE_TO_STATE.items()}

GUEST_TO_WIRE: dict[GuestState, pb.GuestRunnerState.ValueType] = {
    GuestState.UNSPECIFIED: pb.GUEST_RUNNER_STATE_UNSPECIFIED,
    GuestState.OFFLINE: pb.GUEST_RUNNER_STATE_OFFLINE,
    GuestState.IDLE: pb.GUEST_RUNNER_STATE_IDLE,
    GuestState.PREPARING: pb.GUEST_RUNNER_STATE_PREPARING,
    GuestState.RUNNING: pb.GUEST_RUNNER_STATE_RUNNING,
    GuestState.FINISHED: pb.GUEST_RUNNER_STATE_FINISHED,
}
WIRE_TO_GUEST: dict[pb.GuestRunnerState.ValueType, GuestState] = {v: k for k, v in GUEST_TO_WIRE.items()}


def phase_to_state(phase: Phase) -> pb.RunnerState.ValueType:
    return PHASE_TO_STATE[phase]


def state_to_phase(state: int) -> Phase:
    return STATE_TO_PHASE.get(pb.RunnerState.ValueType(state), Phase.ERROR)


def guest_to_wire(state: GuestState) -> pb.GuestRunnerState.ValueType:
    return GUEST_TO_WIRE[state]


def wire_to_guest(state: int) -> GuestState:
    return WIRE_TO_GUEST.get(pb.GuestRunnerState.ValueType(state), GuestState.UNSPECIFIED)


def conditions_to_wire(conditions: list[HostCondition]) -> pb.HostConditionReport:
    report = pb.HostConditionReport()
    for c in conditions:
        m = report.conditions.add(reason=c.reason, message=c.message)
        m.since.FromNanoseconds(int(c.since * 1e9))
    return report


def wire_to_conditions(report: pb.HostConditionReport) -> list[HostCondition]:
    return [HostCondition(c.reason, c.message, c.since.ToNanoseconds() / 1e9) for c in report.conditions if c.reason]
