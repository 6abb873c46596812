"""Always destroyed (issue 12 item 1): runners torn down without myshoes' DeleteInstance.

The rules as a table (agent/reaper.py's ReapPolicy), then each on real parts — a server and a sim
agent over TCP, `vm run` processes, sshd guests with the runner-agent: the guest's runner finished
and the grace passed; it never reached IDLE; it outlived max_lifetime; its VM process was killed;
its agent was gone longer than reap_after_agent_gone (the server's rule, and a returning agent tears
the runner down). Each time: the reason in the agent's record (evidence), in the server's row and in
a counter, and a later DeleteInstance answers NOT_FOUND — done, for myshoes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from stack_fixtures import SimStack, agent_settings, eventually, make_stack

from shoes_vz.agent.app import Agent
from shoes_vz.agent.reaper import GuestSeen, ReapPolicy
from shoes_vz.core.states import GuestState, Phase, ReapReason
from shoes_vz.demo import fake_runner_script
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

# the guest's runner registers, takes a job, finishes it and exits (as an ephemeral runner does)
FINISHING_RUNNER = """#!/bin/sh
mkdir -p "${SHOESVZ_GUEST_HOME:-/tmp}/runner/_diag"
cd "${SHOESVZ_GUEST_HOME:-/tmp}/runner"
printf '{"agentId": %d, "agentName": "%s", "poolId": 1}\\n' "$$" "done-1" > .runner
log="_diag/Runner_$(date -u +%Y%m%d-%H%M%S)-utc.log"
echo "[$(date -u '+%Y-%m-%d %H:%M:%SZ') INFO Runner] Listening for Jobs" >> "$log"
sleep 1
echo "[$(date -u '+%Y-%m-%d %H:%M:%SZ') INFO Runner] Job build completed with result: Succeeded" >> "$log"
"""

POLICY = ReapPolicy(finished_after=60, registration_timeout=900, max_lifetime=3600)


def seen(age: float = 10, *, polled: bool = True, registered: float | None = None, finished: float | None = None,
         now: float = 10_000.0) -> GuestSeen:
    return GuestSeen(now - age, polled, registered, finished, GuestState.OFFLINE)


@pytest.mark.parametrize(("case", "policy", "expected"), [
    (seen(), POLICY, None),
    (seen(3601, registered=9000), POLICY, ReapReason.MAX_LIFETIME),
    (seen(120, registered=9900, finished=9959), POLICY, None),              # finished 41 s ago: myshoes' turn
    (seen(120, registered=9900, finished=9940), POLICY, ReapReason.FINISHED),
    (seen(901), POLICY, ReapReason.REGISTRATION_TIMEOUT),
    (seen(901, polled=False), POLICY, None),                               # adopted, not asked yet: unknown
    (seen(901, registered=9200), POLICY, None),                            # registered, waiting for a job
    (seen(10**6), ReapPolicy(0, 0, 0), None),                              # every rule off
])
def test_rules(case: GuestSeen, policy: ReapPolicy, expected: ReapReason | None) -> None:
    due = policy.due(case, now=10_000.0)
    assert (due[0] if due else None) == expected


def reaped_count(agent: Agent, reason: ReapReason) -> float:
    return agent.metrics.registry.get_sample_value("shoesvz_runners_reaped_total", {"reason": reason.value}) or 0


@pytest.fixture
async def loopback(tmp_path: Path) -> AsyncIterator[Any]:
    """A loopback sim stack with the agent settings a test gives."""
    async def make(**agent_kw: Any) -> Any:
        return make_stack(tmp_path, driver_options={"mode": "loopback"}, evidence_for_every_runner=False, **agent_kw)
    yield make


async def _reaped_without_myshoes(stack: SimStack, name: str, script: str, reason: ReapReason) -> dict[str, Any]:
    """Create through ShoesService, never delete: the runner must go by itself, for `reason`."""
    async with stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        reply = await stack.add(stub, name, script)
        runner_id = reply.cloud_id.removeprefix("shoes-vz-")
        runner = stack.agent.runners[runner_id]
        await eventually(lambda: runner_id not in stack.agent.runners, timeout=30)
        assert runner.reaped == reason and runner.error.startswith(f"reaped ({reason}):") or reason == "vm_died"
        assert not runner.bundle.path.exists() and runner.bundle.stray_pids() == []
        assert reaped_count(stack.agent, reason) == 1
        # the agent's record of it, kept as evidence (runner.json)
        record = json.loads((stack.agent.settings.state_dir / "evidence" / runner_id / "runner.json").read_text())
        assert record["reaped"] == reason.value and record["error"] == runner.error
        row = await eventually(lambda: _gone_row(stack, runner_id), timeout=10)
        assert row.error == runner.error
        with pytest.raises(grpc.aio.AioRpcError) as e:  # myshoes' own delete, late: done
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=stack.metadata,
                                      timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        return record


async def _gone_row(stack: SimStack, runner_id: str) -> Any:
    row = await stack.server.store.call(stack.server.store.runner, runner_id)
    return row if row is not None and row.deleted_at is not None else None


async def test_a_finished_runner_is_torn_down_after_the_grace(loopback: Any) -> None:
    async with await loopback(reap_finished_after=1.0) as stack:
        record = await _reaped_without_myshoes(stack, "done-1", FINISHING_RUNNER, ReapReason.FINISHED)
        assert record["guest_runner_state"] == GuestState.FINISHED.value


async def test_a_runner_that_never_registers_is_torn_down(loopback: Any) -> None:
    async with await loopback(registration_timeout=2.0) as stack:
        await _reaped_without_myshoes(stack, "never-1", "true\n", ReapReason.REGISTRATION_TIMEOUT)


async def test_a_runner_older_than_max_lifetime_is_torn_down(loopback: Any) -> None:
    async with await loopback(max_lifetime=3.0) as stack:
        record = await _reaped_without_myshoes(stack, "old-1", fake_runner_script("old-1"), ReapReason.MAX_LIFETIME)
        assert record["guest_runner_state"] == GuestState.IDLE.value  # healthy, and still too old


async def test_a_runner_whose_vm_died_is_torn_down(loopback: Any) -> None:
    async with await loopback() as stack:
        async with stack.channel() as ch:
            reply = await stack.add(sgrpc.ShoesServiceStub(ch), "dies-1", fake_runner_script("dies-1"))
        runner = stack.agent.runners[reply.cloud_id.removeprefix("shoes-vz-")]
        pid = runner.bundle.lock_holder()
        assert pid and pid > 0
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: runner.phase == Phase.GONE, timeout=30)
        assert runner.reaped == ReapReason.VM_DIED and "VM process exited" in runner.error
        assert reaped_count(stack.agent, ReapReason.VM_DIED) == 1
        row = await eventually(lambda: _gone_row(stack, runner.runner_id), timeout=10)
        assert "VM process exited" in row.error


async def test_a_runner_myshoes_deletes_is_not_reaped(loopback: Any) -> None:
    async with await loopback(reap_finished_after=1.0, registration_timeout=6.0) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            reply = await stack.add(stub, "kept-1", fake_runner_script("kept-1"))
            runner = stack.agent.runners[reply.cloud_id.removeprefix("shoes-vz-")]
            await eventually(lambda: runner.guest_state == GuestState.IDLE, timeout=20)
            await asyncio.sleep(max(0.0, runner.created_at + 7.0 - time.time()))
            # past both limits: registered, not finished → kept
            assert runner.phase == Phase.RUNNING and runner.reaped is None
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=stack.metadata,
                                      timeout=10)
            await eventually(lambda: runner.phase == Phase.GONE, timeout=20)
        assert runner.reaped is None and runner.error == ""
        assert sum(reaped_count(stack.agent, r) for r in ReapReason) == 0


async def test_the_runners_of_an_agent_gone_too_long_are_reaped_and_torn_down_on_its_return(
        tmp_path: Path, loopback: Any) -> None:
    stack_cm = make_stack(tmp_path, driver_options={"mode": "loopback"},
                          server_kw={"reap_after_agent_gone": 2.0})
    async with stack_cm as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            reply = await stack.add(stub, "orphan-1", fake_runner_script("orphan-1"))
            runner_id = reply.cloud_id.removeprefix("shoes-vz-")
            bundle = stack.agent.runners[runner_id].bundle
            await stack.agent.stop()  # the agent goes (its VM runs on), and stays away
            row = await eventually(lambda: _gone_row(stack, runner_id), timeout=20)
            assert row.error.startswith(f"reaped ({ReapReason.AGENT_GONE}): agent {stack.agent.agent_id}")
            assert stack.server.metrics.registry.get_sample_value(
                "shoesvz_runners_reaped_total", {"reason": "agent_gone"}) == 1
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                          metadata=stack.metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert bundle.is_running()  # still there while the agent is away
            # it comes back, adopts its runner and reports it: the server tells it to tear that down
            returning = Agent(agent_settings(tmp_path, stack.server.port, driver_options={"mode": "loopback"}))
            async with returning:
                assert runner_id in returning.runners
                await eventually(lambda: runner_id not in returning.runners, timeout=30)
                assert not bundle.path.exists() and bundle.stray_pids() == []
