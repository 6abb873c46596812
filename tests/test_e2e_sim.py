"""End to end on real parts: server + agent over TCP, `vm run` processes, OpenSSH sshd guests,
runner-agents. create → SSH_READY → setup_script started → guest IDLE → delete."""

from __future__ import annotations

import ipaddress
import json
import os
import signal

import aiohttp
import grpc
import pytest
from stack_fixtures import SimStack, eventually, make_stack

from shoes_vz.core.states import GuestState, Phase
from shoes_vz.demo import fake_runner_script
from shoes_vz.stack import sim_links
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.leases import newest_lease_for, read_leases
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def runner_of(stack: SimStack, cloud_id: str):
    return stack.agent.runners.get(cloud_id.removeprefix("shoes-vz-"))


async def test_create_ready_idle_delete(any_sim_stack: SimStack) -> None:
    sim_stack = any_sim_stack
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        reply = await sim_stack.add(stub, "e2e-1", fake_runner_script("e2e-1"), resource_type="small",
                                    labels=["macOS"])
        assert reply.shoes_type == "shoes-vz"
        assert reply.cloud_id.startswith("shoes-vz-")
        runner = runner_of(sim_stack, reply.cloud_id)
        assert runner is not None and runner.phase == Phase.RUNNING
        bundle = runner.bundle
        meta = bundle.read_metadata()
        if meta["sim_mode"] == "namespaced":  # an address of the per-agent NAT subnet, by DHCP for our MAC
            assert ipaddress.ip_address(reply.ip_address) in ipaddress.ip_network("198.18.0.0/15")
            lease = newest_lease_for(read_leases(sim_stack.agent.settings.lease_file), runner.mac)
            assert lease is not None and lease.ip == reply.ip_address
        else:
            assert reply.ip_address.startswith("127.100.")
        assert reply.resource_type == "small"
        assert meta["sshd_listening_at"] <= meta["ssh_ready_at"]
        assert runner.timings.clone is not None and runner.timings.boot_to_ssh is not None
        # the setup script runs detached in the guest and imitates the actions runner
        await eventually(lambda: runner.guest_state == GuestState.IDLE, timeout=20)
        # the runner-agent's notify was matched by source address + MAC and gave us its token
        assert runner.token
        state = json.loads(sim_stack.agent.settings.runner_state_file.read_text())
        assert [r["state"] for r in state["runners"]] == ["running"]
        # the server hears it with the agent's next Sync (event-driven, but not in the same instant)
        row = await eventually(lambda: _server_row_idle(sim_stack, runner.runner_id), timeout=10)
        assert row.state == "running" and row.ip_address == reply.ip_address

        await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                  metadata=sim_stack.metadata, timeout=10)
        await eventually(lambda: not bundle.path.exists(), timeout=20)
        await eventually(lambda: runner_of(sim_stack, reply.cloud_id) is None)
        assert bundle.stray_pids() == []
        row = await eventually(lambda: _gone(sim_stack, runner.runner_id))
        # a second delete of the same cloud_id: NOT_FOUND, which myshoes treats as done
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                      metadata=sim_stack.metadata, timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def _server_row_idle(stack: SimStack, runner_id: str) -> object:
    row = await stack.server.store.call(stack.server.store.runner, runner_id)
    return row if row is not None and row.guest_state == "idle" else None


async def _gone(stack: SimStack, runner_id: str) -> bool:
    row = await stack.server.store.call(stack.server.store.runner, runner_id)
    return row is not None and row.deleted_at is not None


async def test_add_twice_same_name_is_one_runner(sim_stack: SimStack) -> None:
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        import asyncio

        a, b = await asyncio.gather(sim_stack.add(stub, "same-name"), sim_stack.add(stub, "same-name"))
        c = await sim_stack.add(stub, "same-name")
        assert a.cloud_id == b.cloud_id == c.cloud_id
        assert len(sim_stack.agent.runners) == 1
        assert len(Bundle.all_in(sim_stack.agent.settings.runners_dir)) == 1


async def test_unknown_delete_is_not_found(sim_stack: SimStack) -> None:
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        for cloud_id in ("shoes-vz-0123456789abcdef", "not-ours", ""):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=cloud_id),
                                          metadata=sim_stack.metadata, timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_no_capacity_is_resource_exhausted(sim_stack: SimStack) -> None:
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        await sim_stack.add(stub, "cap-1")
        await sim_stack.add(stub, "cap-2")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await sim_stack.add(stub, "cap-3")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(sim_stack.agent.runners) == 2


@pytest.mark.parametrize(
    ("request_kw", "needle"),
    [
        ({"runner_name": "bad name!"}, "runner_name"),
        ({"runner_name": "-leading-dash"}, "runner_name"),
        ({"runner_name": "x" * 129}, "runner_name"),
        ({"runner_name": "ok", "resource_type": "gigantic"}, "resource_type"),
        ({"runner_name": "ok", "setup_script": "x" * (1024 * 1024 + 1)}, "setup_script"),
        ({"runner_name": "ok", "labels": ["a\nb"]}, "label"),
        ({"runner_name": "ok", "labels": ["l"] * 65}, "labels"),
    ],
)
async def test_bad_input_is_invalid_argument_and_creates_nothing(sim_stack: SimStack, request_kw, needle) -> None:
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.AddInstance(spb.AddInstanceRequest(**request_kw), metadata=sim_stack.metadata, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in e.value.details()
    assert sim_stack.agent.runners == {}
    assert await sim_stack.server.store.call(sim_stack.server.store.live_runners) == []
    assert Bundle.all_in(sim_stack.agent.settings.runners_dir) == []


async def test_vm_process_killed_goes_error_then_torn_down(sim_stack: SimStack) -> None:
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        reply = await sim_stack.add(stub, "doomed")
        runner = runner_of(sim_stack, reply.cloud_id)
        assert runner is not None
        pid = runner.bundle.lock_holder()
        assert pid and pid > 0
        seen: list[Phase] = []
        original = runner.on_change

        def spy(r):  # record every phase the runner passes through
            seen.append(r.phase)
            original(r)

        runner.on_change = spy
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: runner.gone.is_set(), timeout=20)
        assert Phase.ERROR in seen and seen[-1] == Phase.GONE
        assert "VM process exited" in runner.error
        assert not runner.bundle.path.exists()
        assert runner.bundle.stray_pids() == []
        await eventually(lambda: _gone(sim_stack, runner.runner_id))
        # myshoes retries with the same name: a fresh runner
        again = await sim_stack.add(stub, "doomed")
        assert again.cloud_id != reply.cloud_id


async def test_notify_matching_no_runner_is_403(sim_stack: SimStack) -> None:
    url = f"http://127.0.0.1:{sim_stack.agent.notify_port}/notify-ip"
    async with aiohttp.ClientSession() as http:
        # upstream's body shape, from an address no runner holds
        async with http.post(url, json={"runner_id": "x", "ip_address": "127.0.0.1"}) as r:
            assert r.status == 403
        # claims an address it does not come from
        async with http.post(url, json={"ip_address": "127.100.0.9", "mac_address": "2:0:0:0:0:1"}) as r:
            assert r.status == 403
        async with http.post(url, data=b"not json") as r:
            assert r.status == 400


async def test_metrics_expose_design_names(sim_stack: SimStack) -> None:
    async with sim_stack.channel() as ch:
        await sim_stack.add(sgrpc.ShoesServiceStub(ch), "metered")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{sim_stack.server.metrics_port}/metrics") as r:
            text = await r.text()
        async with http.get(f"http://127.0.0.1:{sim_stack.agent.metrics_port}/metrics") as r:
            agent_text = await r.text()
    for name in ("shoesvz_agents_online 1.0", 'shoesvz_agents_total{status="online"} 1.0',
                 'shoesvz_runners_total{state="running"} 1.0', "shoesvz_capacity_total_runners 2.0",
                 'shoesvz_runner_startup_duration_seconds_count{phase="boot_to_ssh"} 1.0'):
        assert name in text
    assert ('shoesvz_agent_runner_startup_duration_seconds_count{phase="clone",start="cold",template="sim-test"} 1.0'
            in agent_text)


async def test_agent_restart_keeps_and_readopts_vms(tmp_path) -> None:
    from shoes_vz.agent.app import Agent

    async with make_stack(tmp_path) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            reply = await stack.add(stub, "survivor")
            old = runner_of(stack, reply.cloud_id)
            pid = old.bundle.lock_holder()
            agent_id = stack.agent.agent_id
            await stack.agent.stop(tear_down=False)  # the agent goes away; the VM must not
            assert old.bundle.lock_holder() == pid
            lease_file = stack.agent.settings.lease_file
            links = sim_links(lease_file)  # a namespaced guest's network outlives the agent with its VM
            assert bool(links) == (old.bundle.read_metadata()["sim_mode"] == "namespaced")
            new = Agent(stack.agent.settings.model_copy(update={"notify_url": ""}))
            await new.start()
            try:
                assert new.agent_id == agent_id  # stable identity
                adopted = new.runners[old.runner_id]
                assert adopted.phase == Phase.RUNNING and adopted.ip == reply.ip_address
                await eventually(lambda: agent_id in stack.server.hub.connections)
                await eventually(lambda: adopted.guest_state != GuestState.UNSPECIFIED)
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                          metadata=stack.metadata, timeout=10)
                await eventually(lambda: not old.bundle.path.exists(), timeout=20)
            finally:
                await new.stop(tear_down=True)
            stack.agent = new
            # and goes once the last VM is gone, with nobody asking it to
            await eventually(lambda: not sim_links(lease_file), timeout=15)
