"""The VM-limit leak detected and survived (issue 12 item 4), on real parts: a server and a sim agent
over TCP, `vm run` processes whose sim driver refuses to start (the framework's "number of VMs
exceeds the system limit", switched by a file: driver option refuse_start_file) while fewer VMs than
the limit run. The agent marks itself degraded with the remedies, takes no runners, says so in
`shoes-vz status`, its /metrics and the server's view, probes with VMs of its own, and returns to
service by itself once one starts."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import grpc
import pytest
from stack_fixtures import CLI, SimStack, cli_env, eventually, make_stack

from shoes_vz.agent.degraded import REMEDIES
from shoes_vz.core.conditions import Reason
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

RETRIED = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()


async def _server_reasons(stack: SimStack) -> set[str]:
    agents = await stack.server.store.call(stack.server.store.agents)
    return {c.reason for a in agents for c in a.conditions}


async def test_a_host_whose_framework_refuses_vms_below_its_limit_is_degraded_and_recovers_by_itself(
        tmp_path: Path) -> None:
    refuse = tmp_path / "vm-limit-leak"
    async with make_stack(tmp_path, degraded_probe_after=0.3,
                          driver_options={"mode": "loopback", "refuse_start_file": str(refuse)}) as stack:
        agent = stack.agent
        refuse.touch()  # the leak begins: no VM starts, although none runs
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await stack.add(stub, "job-1")
            assert first.value.code() in RETRIED  # never INVALID_ARGUMENT: myshoes retries
            assert "host quota" in (first.value.details() or "")
            degraded = [c for c in agent.conditions.list() if c.reason == Reason.DEGRADED]
            assert degraded and REMEDIES in degraded[0].message and "reboot" in degraded[0].message
            # the server's view: out of placement; a new job is refused saying why
            assert await eventually(lambda: _has(stack, "degraded"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as second:
                await stack.add(stub, "job-2")
            assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "degraded" in (second.value.details() or "")
            assert 'shoesvz_agents_out_of_placement{reason="degraded"} 1.0' in await _metrics(stack.server.metrics_port)
            assert 'shoesvz_host_conditions{reason="degraded"} 1.0' in await _metrics(agent.metrics_port)
            # `shoes-vz status` on the host says it, with the remedies
            await eventually(lambda: "degraded" in agent.settings.runner_state_file.read_text(), timeout=10)
            status = await asyncio.to_thread(
                subprocess.run, [*CLI, "status", "--state-file", str(agent.settings.runner_state_file)],
                capture_output=True, text=True, timeout=60, env=cli_env(COLUMNS="400"))
            assert status.returncode == 0, status.stderr
            assert "out of placement: degraded:" in status.stdout and "reboot" in status.stdout
            # it probes by itself (with backoff), and stays degraded while VMs are refused
            await eventually(lambda: agent.degraded.probes >= 2, timeout=20)
            assert Reason.DEGRADED in {c.reason for c in agent.conditions.list()}
            assert not agent.runners  # a probe is no runner: the server never hears of it
            refuse.unlink()  # the leak is gone (a reboot, the other VM stopped)
            await eventually(lambda: not agent.conditions, timeout=30)
            await eventually(lambda: _none(stack), timeout=10)
            assert 'shoesvz_host_conditions{reason="degraded"}' not in await _metrics(agent.metrics_port)
            reply = await stack.add(stub, "job-2")  # back in service, with nobody's help
            assert reply.ip_address
        assert not [b for b in (tmp_path / "runners").iterdir() if b.name.endswith(".bundle")
                    and b.name.removesuffix(".bundle") not in agent.runners]  # probes leave nothing


async def _has(stack: SimStack, reason: str) -> bool:
    return reason in await _server_reasons(stack)


async def _none(stack: SimStack) -> bool:
    return not await _server_reasons(stack)
