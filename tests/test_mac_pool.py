"""Addresses for ever: cold runners recycle this host's MACs (agent/mac_pool.py), so a NAT pool whose
leases last a day is not spent by a day of runners — on the namespaced sim, whose DHCP server keeps
bootpd's rules (finite pool, lease time, sticky MACs, nothing when spent)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from stack_fixtures import eventually, make_stack, require_namespaced

from shoes_vz.agent.mac_pool import MacPool
from shoes_vz.vm.leases import MACAddress, read_leases
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

BOOTPD = {"lease_seconds": 86400, "dhcp_release": False}  # a day's leases, guests that never give them back


async def test_the_pool_hands_out_the_last_freed_mac_and_never_one_in_use(tmp_path: Path) -> None:
    pool = MacPool(tmp_path)
    a = pool.acquire("r1", set())
    b = pool.acquire("r2", {a})
    assert a != b and len(pool) == 2
    pool.release("r1", vm_gone=True)
    assert pool.acquire("r3", {b}) == a  # freed: reused
    pool.release("r2", vm_gone=True)
    pool.release("r3", vm_gone=True)
    assert pool.acquire("r4", set()) == a  # the most recently freed first
    slot_mac = MACAddress.random_local()
    c = pool.acquire("r5", {a, slot_mac})  # a live VM's MAC (a warm slot's) is never handed out
    assert c not in (a, slot_mac)
    pool.release("r5", vm_gone=False)  # its VM did not stop: that MAC stays out of use
    assert pool.acquire("r6", {a}) not in (a, c)
    await pool.drain()
    saved = json.loads((tmp_path / "mac-pool.json").read_text())
    assert {e["mac"] for e in saved["macs"]} == {str(m) for m in pool.macs()}
    again = MacPool(tmp_path)
    again.load()
    assert again.macs() == pool.macs()
    again.reconcile({"r4": a})  # after a restart: r4 was adopted; r6 (and its VM) are gone
    assert again.held() == {"r4": str(a)}
    await again.drain()


async def test_without_recycling_every_runner_takes_a_fresh_mac(tmp_path: Path) -> None:
    pool = MacPool(tmp_path, recycle=False)
    seen = {pool.acquire(f"r{i}", set()) for i in range(5)}
    assert len(seen) == 5 and len(pool) == 0


@pytest.mark.parametrize("recycle", [True, False], ids=["recycled", "fresh"])
async def test_runners_that_outnumber_a_spent_pool_all_get_an_address(tmp_path: Path, recycle: bool) -> None:
    """A pool of 3 addresses with day-long leases that guests never release: fresh MACs leave the fourth
    runner without an address (as before MACs were recycled); recycled ones keep getting theirs back.
    Runners overlap as myshoes makes them (the next is asked for while the last is torn down), so two
    MACs are in turn."""
    require_namespaced()
    async with make_stack(tmp_path, driver_options={**BOOTPD, "pool_size": 3}, boot_to_ip_timeout=15.0,
                          mac_recycling=recycle) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            ips = []
            for i in range(8):
                try:
                    reply = await stack.add(stub, f"day-{i}")
                except grpc.aio.AioRpcError as e:
                    assert not recycle and i == 3, e
                    assert "the NAT pool may be spent" in (e.details() or "")
                    return
                ips.append(reply.ip_address)
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                          metadata=stack.metadata, timeout=10)
            await eventually(lambda: not stack.agent.runners, timeout=30)
        assert recycle, "fresh MACs outnumbered the pool and still got addresses"
        leases = read_leases(stack.agent.settings.lease_file)
        assert {le.mac for le in leases} <= stack.agent.macs.macs()
        assert 1 <= len(stack.agent.macs) <= 2 and len(leases) == len(stack.agent.macs)
        assert len(set(ips)) == len(stack.agent.macs)  # each MAC its own address, again and again


async def test_concurrent_runners_never_share_a_mac_and_a_restart_keeps_the_pool(tmp_path: Path) -> None:
    require_namespaced()
    from shoes_vz.agent.app import Agent

    async with make_stack(tmp_path, driver_options=BOOTPD) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            a, b = await asyncio.gather(stack.add(stub, "left"), stack.add(stub, "right"))
            runners = list(stack.agent.runners.values())
            assert len({r.mac for r in runners}) == 2 and a.ip_address != b.ip_address
            before = stack.agent.macs.held()
            await stack.agent.stop(tear_down=False)  # the VMs outlive the agent ...
            new = Agent(stack.agent.settings.model_copy(update={"notify_url": ""}))
            await new.start()
            try:
                assert new.macs.held() == before  # ... and hold their MACs in the new agent's pool
                await eventually(lambda: new.agent_id in stack.server.hub.connections, timeout=10)
                for reply in (a, b):
                    await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                              metadata=stack.metadata, timeout=10)
                await eventually(lambda: not new.runners, timeout=30)
                assert new.macs.held() == {}
                c = await stack.add(stub, "after")
                assert new.runners[c.cloud_id.removeprefix("shoes-vz-")].mac in {r.mac for r in runners}
                assert c.ip_address in (a.ip_address, b.ip_address)  # its MAC's lease: its address again
            finally:
                await new.stop(tear_down=True)


@pytest.mark.parametrize("recycle", [True, False])
def test_the_pool_file_survives_garbage(tmp_path: Path, recycle: bool) -> None:
    (tmp_path / "mac-pool.json").write_text("{not json")
    pool = MacPool(tmp_path, recycle=recycle)
    pool.load()
    assert len(pool) == 0
