"""Gone runners' rows are kept for a while, not for ever (server.history_keep, history_max_age).

A host that serves for months would otherwise grow the server's database by a row per runner (and
its commands) without end. The store's rule first, on SQLite on disk; then on a real server and sim
agent over TCP: the server forgets by itself, what it forgot is NOT_FOUND for myshoes (done), the
fleet's lists and the status page's failures hold only what it kept, and a VM the server has
forgotten that an agent still reports is torn down (the orphan rule).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from stack_fixtures import eventually, make_stack, server_settings
from test_server_grpc import MD, ScriptedAgent, connected_agent, running

from shoes_vz.server import app as server_app
from shoes_vz.server.app import ServerApp
from shoes_vz.server.fleet import Fleet
from shoes_vz.server.store import Command, RunnerRow, Store
from shoes_vz.wire import admin_pb2 as adpb
from shoes_vz.wire import admin_pb2_grpc as adgrpc
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

DAY = 86400.0


def _insert(store: Store, n: int, *, created: float) -> str:
    runner_id = f"{n:016x}"
    row = RunnerRow(runner_id, f"job-{n}", "a1", "pending", "small", "t", created_at=created)
    store.insert_runner_with_command(row, Command(f"req-{n}", "a1", runner_id, "create",
                                                  {"setup_script": "token", "template": "t"}))
    store.ack(f"req-{n}", "a1", True, "")
    return runner_id


def _gone(store: Store, runner_id: str, at: float) -> None:
    store.mark_gone(runner_id)
    store.db.execute("UPDATE runners SET deleted_at=? WHERE runner_id=?", (at, runner_id))


def _ids(store: Store, table: str) -> set[str]:
    return {r[0] for r in store.db.execute(f"SELECT runner_id FROM {table}")}


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "db" / "server.db")
    await s.aopen()
    yield s
    await s.aclose()


async def test_the_newest_gone_runners_are_kept_and_every_live_one(store: Store) -> None:
    now = time.time()

    def scene() -> tuple[list[str], list[str]]:
        gone = [_insert(store, i, created=now - 10 * DAY) for i in range(6)]
        for age, runner_id in zip(range(6, 0, -1), gone, strict=True):  # gone[5] went last
            _gone(store, runner_id, now - age)
        live = [_insert(store, 100 + i, created=now - 90 * DAY) for i in range(2)]  # old, still running
        store.request_delete(live[1], Command("req-del", "a1", live[1], "delete", {}))  # its delete pending
        return gone, live

    gone, live = await store.call(scene)
    assert await store.call(store.prune_history, 2, now - DAY) == 4
    kept = {*gone[4:], *live}
    assert await store.call(_ids, store, "runners") == kept
    assert await store.call(_ids, store, "outbox") == kept  # the forgotten runners' commands went with them
    assert [c.kind for c in await store.call(store.pending_commands, "a1")] == ["delete"]  # a live one's stays
    assert await store.call(store.prune_history, 2, now - DAY) == 0
    assert await store.call(store.prune_history, 0, now - DAY) == 2  # 0 keeps no gone runner
    assert await store.call(_ids, store, "runners") == set(live)


async def test_gone_runners_older_than_the_age_are_forgotten_whatever_the_count(store: Store) -> None:
    now = time.time()

    def scene() -> list[str]:
        ids = [_insert(store, i, created=now - 40 * DAY) for i in range(3)]
        for runner_id, at in zip(ids, (now - 31 * DAY, now - 29 * DAY, now - 60), strict=True):
            _gone(store, runner_id, at)
        return ids

    ids = await store.call(scene)
    assert await store.call(store.prune_history, 10_000, now - 30 * DAY) == 1
    assert await store.call(_ids, store, "runners") == set(ids[1:])


async def test_a_forgotten_runner_is_not_found_and_a_vm_still_reported_is_torn_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server reaped a runner (its agent was away), then forgot it; the agent comes back still
    running its VM: myshoes' delete is done (NOT_FOUND) and the agent is told to destroy the VM."""
    monkeypatch.setattr(server_app, "PRUNE_EVERY", 0.2)
    async with ServerApp(server_settings(tmp_path, history_keep=0, reap_after_agent_gone=0.5)) as server:
        agent = await connected_agent(server)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            call = asyncio.ensure_future(stub.AddInstance(
                spb.AddInstanceRequest(runner_name="kept-alive", resource_type="small"), metadata=MD, timeout=20))
            cmd = (await agent.next_command()).create_runner
            agent.send([running(cmd, agent.agent_id)], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
            cloud_id = (await call).cloud_id
            await agent.close()  # away longer than reap_after_agent_gone: reaped, then forgotten
            assert await eventually(
                lambda: _forgotten(server, cmd.runner_id), timeout=15), "the reaped runner's row was kept"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=cloud_id), metadata=MD, timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
        back = ScriptedAgent(f"127.0.0.1:{server.port}")
        back.md = agent.md
        await back.connect(runners=[running(cmd, back.agent_id)])
        assert (await back.next_command()).delete_runner.runner_id == cmd.runner_id
        await back.close()


async def _forgotten(server: ServerApp, runner_id: str) -> bool:
    return await server.store.call(server.store.runner, runner_id) is None


async def test_a_server_forgets_old_runners_by_itself_and_its_views_agree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_app, "PRUNE_EVERY", 0.2)
    async with make_stack(tmp_path, driver_options={"mode": "loopback"}, server_kw={"history_keep": 2}) as stack:
        store = stack.server.store
        cloud_ids = []
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            for i in range(4):
                reply = await stack.add(stub, f"hist-{i}", resource_type="small")
                cloud_ids.append(reply.cloud_id)
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=stack.metadata,
                                          timeout=30)
                runner_id = reply.cloud_id.removeprefix("shoes-vz-")
                await eventually(lambda: _gone_at(store, runner_id), timeout=30)  # noqa: B023 (awaited here)
            ids = [c.removeprefix("shoes-vz-") for c in cloud_ids]
            assert await eventually(lambda: _kept(store, ids[2:]), timeout=10), "the two newest are not all kept"
            with pytest.raises(grpc.aio.AioRpcError) as e:  # a late retry of myshoes' delete: done
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=cloud_ids[0]), metadata=stack.metadata,
                                          timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            listed = await adgrpc.AdminServiceStub(ch).ListRunners(adpb.ListRunnersRequest(include_gone=True),
                                                                   timeout=10)
        assert [r.runner_id for r in listed.runners] == ids[:1:-1]  # newest first, only what is kept
        fleet = Fleet(store)
        assert {r.runner_id for r in await store.call(fleet.failures)} <= set(ids[2:])
        with sqlite3.connect(stack.server.settings.db_path) as db:
            assert {r[0] for r in db.execute("SELECT DISTINCT runner_id FROM outbox")} == set(ids[2:])


async def _gone_at(store: Store, runner_id: str) -> bool:
    row = await store.call(store.runner, runner_id)
    return row is None or row.deleted_at is not None


async def _kept(store: Store, ids: list[str]) -> bool:
    rows = await store.call(lambda: [r[0] for r in store.db.execute("SELECT runner_id FROM runners")])
    return sorted(rows) == sorted(ids)

