"""Disk (issue 12 item 5): before a clone the runners volume must keep `agent.disk_reserve` free
(default: the largest template's disk size); below it the clone is refused with a code myshoes
retries, the host is out of placement with that reason until the agent's re-check finds the
space again, and the volume's free bytes are a metric. Real statvfs, server, agent and sim VMs."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import grpc
import pytest
from stack_fixtures import SimStack, eventually, make_stack

from shoes_vz.agent.disk import check_reserve, reserve_bytes
from shoes_vz.core.conditions import Reason
from shoes_vz.core.errors import DiskBelowReserve
from shoes_vz.template import init_sim
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

TIB = 1 << 40


def test_the_default_reserve_is_the_largest_templates_disk(tmp_path: Path) -> None:
    small = init_sim(tmp_path, "small", disk_bytes=1 << 30)
    large = init_sim(tmp_path, "large", disk_bytes=3 << 30)
    assert reserve_bytes(None, [small, large]) == 3 << 30
    assert reserve_bytes(5, [small, large]) == 5  # the setting wins, 0 included
    assert reserve_bytes(0, [large]) == 0


def test_a_volume_below_the_reserve_refuses_with_the_figures_and_the_setting(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert check_reserve(tmp_path, 0) > 0
    with pytest.raises(DiskBelowReserve) as e:
        check_reserve(tmp_path, free + TIB)
    assert "agent.disk_reserve" in str(e.value) and "GiB free, below the reserve of" in str(e.value)


async def _agent_conditions(stack: SimStack) -> set[str]:
    agents = await stack.server.store.call(stack.server.store.agents)
    return {c.reason for a in agents for c in a.conditions}


async def test_a_clone_below_the_reserve_is_refused_and_the_host_leaves_placement(tmp_path: Path) -> None:
    async with make_stack(tmp_path, disk_reserve=0) as stack:
        agent = stack.agent
        # the volume "fills" under a running agent: the reserve is now more than it has free
        agent.settings = agent.settings.model_copy(update={"disk_reserve": shutil.disk_usage(tmp_path).free + TIB})
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await stack.add(stub, "job-1")
            assert first.value.code() == grpc.StatusCode.UNAVAILABLE  # retried by myshoes, never dropped
            assert "below the reserve" in (first.value.details() or "")
            assert [c.reason for c in agent.conditions.list()] == [Reason.DISK_RESERVE]
            assert await eventually(lambda: _has_reserve_condition(stack), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as second:  # nowhere else to go: says why
                await stack.add(stub, "job-1")
            assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk_below_reserve" in (second.value.details() or "")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{agent.metrics_port}/metrics") as resp:
                    text = await resp.text()
            free = [line for line in text.splitlines() if line.startswith("shoesvz_runners_volume_free_bytes ")]
            assert free and float(free[0].split()[1]) > 0
        assert not list((tmp_path / "runners").iterdir()) or all(
            p.name.startswith(".") for p in (tmp_path / "runners").iterdir())  # nothing half-created


async def _has_reserve_condition(stack: SimStack) -> bool:
    return Reason.DISK_RESERVE.value in await _agent_conditions(stack)


async def test_the_reserve_condition_clears_by_itself_when_space_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoes_vz.agent import app as agent_app

    monkeypatch.setattr(agent_app, "CONDITION_RECHECK_INTERVAL", 0.2)
    huge = shutil.disk_usage(tmp_path).free + TIB
    async with make_stack(tmp_path, disk_reserve=huge) as stack:  # below it from the start
        assert [c.reason for c in stack.agent.conditions.list()] == [Reason.DISK_RESERVE]
        assert await eventually(lambda: _has_reserve_condition(stack), timeout=10)
        stack.agent.settings = stack.agent.settings.model_copy(update={"disk_reserve": 1 << 20})  # space "freed"
        await eventually(lambda: not stack.agent.conditions, timeout=10)
        await eventually(lambda: _no_conditions(stack), timeout=10)
        async with stack.channel() as ch:
            reply = await stack.add(sgrpc.ShoesServiceStub(ch), "job-2")
        assert reply.ip_address


async def _no_conditions(stack: SimStack) -> bool:
    return not await _agent_conditions(stack)
