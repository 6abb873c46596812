"""Attack 3 of issue 11, "agent identity takeover": a Sync stream whose first message named a real agent's
id replaced that agent's stream and received its next create command. Now an agent is an enrolled
identity (docs/security.md §3): the forged id, the myshoes credential and another agent's credential
all fail, the live stream stays, and only the operator can release an id (forget-agent)."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import grpc
from attackers import AGENT, ENROLMENT, MYSHOES, Agent, agent_md, sync, unary
from stack_fixtures import CLI, agent_settings, cli_env, eventually, make_stack, one_error_line, server_settings

from shoes_vz.agent.app import Agent as RealAgent
from shoes_vz.agent.credential import SECRET_FILE
from shoes_vz.server.app import ServerApp
from shoes_vz.stack import free_port
from shoes_vz.template import init_sim
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


async def test_a_forged_id_cannot_take_over_a_live_agents_stream(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        server, real = stack.server, stack.agent.agent_id
        a = stack.server_addr
        live = server.hub.connections[real]
        evil = await Agent(a, "agent-evil").enroll()  # the attacker holds the enrolment token
        hijack = apb.SyncRequest(agent_id=real)
        for md in (evil.md, MYSHOES, ENROLMENT):
            assert (await sync(a, md, [hijack])).code == grpc.StatusCode.PERMISSION_DENIED
        forged = await sync(a, agent_md(real, "guessed-secret-guessed-secret-guessed-secr"), [hijack])
        assert forged.code == grpc.StatusCode.UNAUTHENTICATED
        again = await unary(a, AGENT + "Enroll", apb.EnrollRequest(agent_id=real), ENROLMENT)
        assert again == grpc.StatusCode.PERMISSION_DENIED  # the enrolment token cannot buy an enrolled id
        assert server.hub.connections[real] is live  # never displaced
        assert "agent-evil" not in server.hub.connections
        async with stack.channel() as ch:  # the next runner is still placed on the real agent
            reply = await stack.add(sgrpc.ShoesServiceStub(ch), "job-after-the-attack")
        row = await server.store.call(server.store.runner, reply.cloud_id.removeprefix("shoes-vz-"))
        assert row is not None and row.agent_id == real
        secret = stack.root / "agent" / SECRET_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


async def test_re_enrolment_is_refused_naming_the_operators_way(tmp_path: Path) -> None:
    async with ServerApp(server_settings(tmp_path)) as server:
        a = f"127.0.0.1:{server.port}"
        first = await Agent(a, "agent-a").enroll()
        async with grpc.aio.insecure_channel(a) as ch:
            try:
                await ch.unary_unary(AGENT + "Enroll")(apb.EnrollRequest(agent_id="agent-a").SerializeToString(),
                                                      metadata=ENROLMENT, timeout=5)
                raise AssertionError("an enrolled id was enrolled again")
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "shoes-vz server forget-agent agent-a" in (e.details() or "")
        await first.register()  # the first secret still works


async def test_another_agents_credential_cannot_register_or_report_as_it(tmp_path: Path) -> None:
    async with ServerApp(server_settings(tmp_path)) as server:
        a = f"127.0.0.1:{server.port}"
        victim = await Agent(a, "agent-a").enroll()
        await victim.register(slots=2)
        other = await Agent(a, "agent-b").enroll()
        claim = apb.RegisterAgentRequest(agent_id="agent-a", hostname="b", capacity=apb.AgentCapacity(max_runners=64),
                                         templates=[apb.Template(name="t", resource_types=["small"])])
        assert await unary(a, AGENT + "RegisterAgent", claim, other.md) == grpc.StatusCode.PERMISSION_DENIED
        other.open()  # its own stream, then a message that speaks for agent-a
        await eventually(lambda: "agent-b" in server.hub.connections)
        other.send(agent_id="agent-a")
        assert await other.ended() == grpc.StatusCode.PERMISSION_DENIED
        (row,) = [r for r in await server.store.call(server.store.agents) if r.agent_id == "agent-a"]
        assert row.max_runners == 2 and row.hostname == "test"


async def test_forget_agent_releases_an_id_offline_only(tmp_path: Path) -> None:
    db = tmp_path / "server.db"

    def forget(agent_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "server", "forget-agent", agent_id, "--db", str(db)], capture_output=True,
                              text=True, timeout=60, env=cli_env())

    async with ServerApp(server_settings(tmp_path)) as server:
        a = f"127.0.0.1:{server.port}"
        old = await Agent(a, "agent-a").enroll()
        running = await asyncio.to_thread(forget, "agent-a")
        assert running.returncode == 1 and "Stop the server first" in one_error_line(running.stderr)
    unknown = await asyncio.to_thread(forget, "agent-nobody")
    assert unknown.returncode == 1 and "enrolled: agent-a" in one_error_line(unknown.stderr)
    done = await asyncio.to_thread(forget, "agent-a")
    assert done.returncode == 0, done.stderr
    async with ServerApp(server_settings(tmp_path)) as server:
        a = f"127.0.0.1:{server.port}"
        assert await unary(a, AGENT + "RegisterAgent", apb.RegisterAgentRequest(agent_id="agent-a"), old.md) == \
            grpc.StatusCode.UNAUTHENTICATED
        new = await Agent(a, "agent-a").enroll()
        assert new.md != old.md
        await new.register()


async def test_a_forgotten_agent_enrols_again_by_itself(tmp_path: Path) -> None:
    """The operator's reset as an agent lives it: the server forgets it, the agent notices on its next
    connection and enrols again with its enrolment token (a new secret, 0600)."""
    await asyncio.to_thread(init_sim, tmp_path / "templates", "sim-test", disk_bytes=1 << 20)
    port = free_port()
    settings = server_settings(tmp_path, listen=f"127.0.0.1:{port}")
    async with ServerApp(settings) as server:
        agent = RealAgent(agent_settings(tmp_path, port, allow_copy=True))
        async with agent:
            await eventually(lambda: agent.agent_id in server.hub.connections, timeout=20)
            secret = tmp_path / "agent" / SECRET_FILE
            before = secret.read_text()
            await server.stop()
            await asyncio.to_thread(subprocess.run, [*CLI, "server", "forget-agent", agent.agent_id, "--db",
                                                     str(settings.db_path)], check=True, capture_output=True,
                                    timeout=60, env=cli_env())
            async with ServerApp(settings) as again:
                await eventually(lambda: agent.agent_id in again.hub.connections, timeout=30)
            assert secret.read_text() != before and stat.S_IMODE(secret.stat().st_mode) == 0o600
