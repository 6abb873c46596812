"""Attack 4 of issue 11, "runners that can no longer be deleted": a Sync from another agent id reporting a
real runner's id set `delete_requested` on it, the delete went to the forger, DeleteInstance answered
NOT_FOUND while the VM kept running. Now every report and ack is bound to its sender
(docs/security.md §3): another agent's runner or command is refused whole, changes nothing, is logged
once; addresses must be addresses; orphan deletes are bounded and never grow the store."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from attackers import MYSHOES, SHOES, Agent, add_instance, runner, unary
from stack_fixtures import eventually, server_settings

from shoes_vz.server.app import ServerApp
from shoes_vz.server.limits import MAX_RUNNERS_PER_REPORT
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2 as spb


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerApp]:
    async with ServerApp(server_settings(tmp_path, command_resend_after=1.0)) as app:
        yield app


async def placed(server: ServerApp, name: str = "job-1") -> tuple[Agent, apb.CreateRunnerCommand, str]:
    """A runner RUNNING on agent-a; its cloud_id."""
    a = f"127.0.0.1:{server.port}"
    owner = await Agent(a, "agent-a").enroll()
    await owner.register()
    owner.open()
    await eventually(lambda: "agent-a" in server.hub.connections)
    call = asyncio.ensure_future(add_instance(a, name))
    cmd = (await owner.next_command()).create_runner
    owner.send([runner(cmd, "agent-a")], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
    return owner, cmd, (await call).cloud_id


async def forger(server: ServerApp, md: tuple[tuple[str, str], ...] = ()) -> Agent:
    """agent-b, enrolled (or with the credential it enrolled for), registered, its stream open."""
    other = Agent(f"127.0.0.1:{server.port}", "agent-b")
    if md:
        other.md = md
    else:
        await other.enroll()
    await other.register()
    other.open()
    await eventually(lambda: "agent-b" in server.hub.connections)
    return other


async def test_a_report_about_another_agents_runner_is_refused_and_changes_nothing(
        server: ServerApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoes_vz.server")
    owner, cmd, cloud_id = await placed(server)
    before = await server.store.call(server.store.runner, cmd.runner_id)
    md: tuple[tuple[str, str], ...] = ()
    for _ in range(3):
        other = await forger(server, md)
        md = other.md
        other.send([runner(cmd, "agent-b", apb.RUNNER_STATE_ERROR, ip="6.6.6.6")])
        assert await other.ended() == grpc.StatusCode.PERMISSION_DENIED
        assert "runner" in other.details and "agent-a" not in other.details  # whose it is, is not said
        assert not [c for c in list(other.commands._queue) if c.WhichOneof("command") == "delete_runner"]
        await other.close()
    after = await server.store.call(server.store.runner, cmd.runner_id)
    assert after == before  # state, address, delete_requested: untouched
    refusals = [r for r in caplog.records if "reported runner" in r.getMessage()]
    assert len(refusals) == 1 and "runs on agent agent-a" in refusals[0].getMessage()  # logged once, in full
    # the runner can still be deleted, and the delete goes to its own agent
    assert await unary(f"127.0.0.1:{server.port}", SHOES + "DeleteInstance",
                       spb.DeleteInstanceRequest(cloud_id=cloud_id), MYSHOES) == grpc.StatusCode.OK
    while (msg := await owner.next_command()).WhichOneof("command") != "delete_runner":
        pass
    assert msg.delete_runner.runner_id == cmd.runner_id
    await owner.close()


async def test_acks_count_only_for_the_agents_own_commands(server: ServerApp) -> None:
    a = f"127.0.0.1:{server.port}"
    owner = await Agent(a, "agent-a").enroll()
    await owner.register()
    owner.open()
    await eventually(lambda: "agent-a" in server.hub.connections)
    call = asyncio.ensure_future(add_instance(a, "job-1"))
    cmd = (await owner.next_command()).create_runner
    other = await forger(server)
    other.send(acks=[apb.CommandAck(request_id=cmd.request_id, ok=False, error="agent at capacity")])
    assert await other.ended() == grpc.StatusCode.PERMISSION_DENIED
    row = await server.store.call(server.store.runner, cmd.runner_id)
    assert row is not None and row.state == "creating" and not row.capacity_error  # the forged failure did nothing
    again = (await owner.next_command(timeout=5)).create_runner  # still unacked: re-sent to its agent
    assert again.request_id == cmd.request_id and again.setup_script == cmd.setup_script
    owner.send([runner(cmd, "agent-a")], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
    await call
    await owner.close()
    await other.close()


@pytest.mark.parametrize("address", ["evil.example.com", "0.0.0.0", "224.0.0.1", "192.168.64.5; rm -rf /",
                                     "1.2.3.4\n", "::"])
async def test_a_reported_address_must_be_an_ip_address(server: ServerApp, address: str) -> None:
    owner, cmd, _ = await placed(server)
    owner.send([runner(cmd, "agent-a", ip=address)])
    assert await owner.ended() == grpc.StatusCode.INVALID_ARGUMENT
    row = await server.store.call(server.store.runner, cmd.runner_id)
    assert row is not None and row.ip_address == "192.168.64.5"


async def test_forged_orphan_reports_do_not_grow_the_outbox(server: ServerApp) -> None:
    a = f"127.0.0.1:{server.port}"
    agent = await Agent(a, "agent-a").enroll()
    await agent.register()
    agent.open()
    await eventually(lambda: "agent-a" in server.hub.connections)

    def outbox_rows() -> int:
        return int(server.store.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    before = await server.store.call(outbox_rows)
    fixed = [secrets.token_hex(8) for _ in range(MAX_RUNNERS_PER_REPORT)]
    for _ in range(5):  # the same orphans again and again: one delete each per resend interval
        agent.send([apb.Runner(runner_id=r, state=apb.RUNNER_STATE_RUNNING) for r in fixed])
    await asyncio.sleep(0.5)
    deletes = []
    while not agent.commands.empty():
        deletes.append(agent.commands.get_nowait().delete_runner.runner_id)
    assert sorted(deletes) == sorted(fixed)
    for _ in range(20):  # fresh forged ids every message
        agent.send([apb.Runner(runner_id=secrets.token_hex(8), state=apb.RUNNER_STATE_RUNNING)
                    for _ in range(MAX_RUNNERS_PER_REPORT)])
    await asyncio.sleep(0.5)
    assert await server.store.call(outbox_rows) == before  # orphan deletes are never stored
    assert len(server.agent_service.orphans._sent.get("agent-a", {})) <= MAX_RUNNERS_PER_REPORT
    agent.send([apb.Runner(runner_id=secrets.token_hex(8)) for _ in range(MAX_RUNNERS_PER_REPORT + 1)])
    assert await agent.ended() == grpc.StatusCode.INVALID_ARGUMENT
    await agent.close()


async def test_the_store_takes_an_ack_only_from_the_commands_agent(tmp_path: Path) -> None:
    """The second lock behind the binding: the outbox itself acknowledges a command for its own agent only."""
    from shoes_vz.server.scheduler import Scheduler
    from shoes_vz.server.store import HeldTemplate, Store

    store = Store(tmp_path / "db" / "server.db")
    await store.aopen()
    try:
        await store.call(store.upsert_agent, "agent-a", "a", 2, [HeldTemplate("t", resource_types=("small",))], {})
        await store.call(store.set_agent_online, "agent-a", True)
        _, cmd = await Scheduler(store).reserve("job", "small", "echo secret", [])
        assert await store.call(store.ack, cmd.request_id, "agent-b", True, "") is None
        assert [c.request_id for c in await store.call(store.pending_commands, "agent-a")] == [cmd.request_id]
        assert await store.call(store.ack, cmd.request_id, "agent-a", True, "") is not None
    finally:
        await store.aclose()
