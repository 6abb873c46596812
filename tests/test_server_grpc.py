"""The server over real TCP gRPC, driven by a scripted agent that speaks AgentService itself, so
each protocol rule is visible: deadlines, re-sent commands, reconciliation, auth, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stack_fixtures import TOKEN, enroll, eventually, server_settings

from shoes_vz.server.app import ServerApp
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import agent_pb2_grpc as agrpc
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

MD = (("authorization", f"Bearer {TOKEN}"),)


class ScriptedAgent:
    """An agent whose replies the test decides."""

    def __init__(self, addr: str, agent_id: str = "agent-test", slots: int = 2,
                 templates: list[apb.Template] | None = None) -> None:
        self.addr, self.agent_id, self.slots = addr, agent_id, slots
        self.templates = templates if templates is not None else [apb.Template(name="t", resource_types=["small"])]
        self.commands: asyncio.Queue[apb.SyncResponse] = asyncio.Queue()
        self.outgoing: asyncio.Queue[apb.SyncRequest | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.md: tuple[tuple[str, str], ...] = ()  # the agent's credential, from Enroll on the first connect

    async def connect(self, runners: list[apb.Runner] | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(self.addr)
        stub = agrpc.AgentServiceStub(self.channel)
        if not self.md:
            self.md = await enroll(self.channel, self.agent_id)
        await stub.RegisterAgent(apb.RegisterAgentRequest(
            agent_id=self.agent_id, hostname="test", capacity=apb.AgentCapacity(max_runners=self.slots),
            templates=self.templates), metadata=self.md)
        self.outgoing.put_nowait(apb.SyncRequest(agent_id=self.agent_id, runners=runners or []))

        async def requests() -> AsyncIterator[apb.SyncRequest]:
            while (msg := await self.outgoing.get()) is not None:
                yield msg

        call = stub.Sync(requests(), metadata=self.md)

        async def pump() -> None:
            async for msg in call:
                self.commands.put_nowait(msg)

        self._task = asyncio.create_task(pump())

    def send(self, runners: list[apb.Runner] = (), acks: list[apb.CommandAck] = (),
             templates: list[apb.Template] | None = None) -> None:
        msg = apb.SyncRequest(agent_id=self.agent_id, runners=list(runners), acks=list(acks))
        if templates is not None:
            msg.templates.SetInParent()
            msg.templates.templates.extend(templates)
        self.outgoing.put_nowait(msg)

    async def next_command(self, timeout: float = 5) -> apb.SyncResponse:
        return await asyncio.wait_for(self.commands.get(), timeout)

    async def close(self) -> None:
        self.outgoing.put_nowait(None)
        if self._task:
            self._task.cancel()
        await self.channel.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerApp]:
    async with ServerApp(server_settings(tmp_path, command_resend_after=0.5)) as app:
        yield app


async def connected_agent(server: ServerApp, **kw: Any) -> ScriptedAgent:
    """A scripted agent whose Sync stream the server has attached."""
    agent = ScriptedAgent(f"127.0.0.1:{server.port}", **kw)
    await agent.connect()
    await eventually(lambda: agent.agent_id in server.hub.connections)
    return agent


def running(cmd: apb.CreateRunnerCommand, agent_id: str, state=apb.RUNNER_STATE_RUNNING) -> apb.Runner:
    return apb.Runner(runner_id=cmd.runner_id, runner_name=cmd.runner_name, agent_id=agent_id, state=state,
                      ip_address="192.168.64.5")


async def test_add_instance_completes_when_agent_reports_running(server: ServerApp) -> None:
    agent = await connected_agent(server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        call = asyncio.ensure_future(stub.AddInstance(spb.AddInstanceRequest(runner_name="j1"), metadata=MD,
                                                      timeout=10))
        cmd = (await agent.next_command()).create_runner
        assert cmd.runner_name == "j1" and cmd.resource_type == "small" and cmd.template == "t"
        agent.send([running(cmd, agent.agent_id, apb.RUNNER_STATE_BOOTING)],
                   [apb.CommandAck(request_id=cmd.request_id, ok=True)])
        await asyncio.sleep(0.2)
        assert not call.done()  # booting is not ready
        agent.send([running(cmd, agent.agent_id)])
        reply = await call
        assert reply.cloud_id == f"shoes-vz-{cmd.runner_id}" and reply.ip_address == "192.168.64.5"
    await agent.close()


async def test_deadline_is_respected_and_the_runner_torn_down(server: ServerApp) -> None:
    agent = await connected_agent(server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.AddInstance(spb.AddInstanceRequest(runner_name="slow"), metadata=MD, timeout=2.5)
        assert loop.time() - t0 < 2.5
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        create = (await agent.next_command()).create_runner
        while (msg := await agent.next_command()).WhichOneof("command") == "create_runner":
            pass  # unacked creates are re-sent meanwhile
        assert msg.delete_runner.runner_id == create.runner_id
    await agent.close()


async def test_commands_resent_until_acked_and_after_reconnect(server: ServerApp) -> None:
    agent = await connected_agent(server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        call = asyncio.ensure_future(stub.AddInstance(spb.AddInstanceRequest(runner_name="r"), metadata=MD,
                                                      timeout=15))
        first = (await agent.next_command()).create_runner
        again = (await agent.next_command(timeout=5)).create_runner  # not acked: re-sent
        assert again.request_id == first.request_id
        await agent.close()  # the agent drops; the command waits in the outbox
        agent2 = ScriptedAgent(f"127.0.0.1:{server.port}")
        agent2.md = agent.md  # the same agent, reconnecting with its secret
        await agent2.connect()
        resent = (await agent2.next_command()).create_runner
        assert resent.request_id == first.request_id
        agent2.send([running(resent, agent2.agent_id)], [apb.CommandAck(request_id=resent.request_id, ok=True)])
        assert (await call).cloud_id.endswith(first.runner_id)
        await agent2.close()


async def test_reconcile_orphans_and_missing(server: ServerApp) -> None:
    agent = ScriptedAgent(f"127.0.0.1:{server.port}")
    orphan = apb.Runner(runner_id="00000000000000aa", runner_name="ghost", state=apb.RUNNER_STATE_RUNNING)
    await agent.connect(runners=[orphan])
    cmd = await agent.next_command()
    assert cmd.delete_runner.runner_id == "00000000000000aa"  # unknown live runner: destroyed


async def test_create_refused_for_capacity_is_resource_exhausted(server: ServerApp) -> None:
    agent = await connected_agent(server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        call = asyncio.ensure_future(stub.AddInstance(spb.AddInstanceRequest(runner_name="c"), metadata=MD,
                                                      timeout=10))
        cmd = (await agent.next_command()).create_runner
        agent.send([], [apb.CommandAck(request_id=cmd.request_id, ok=False, error="agent at capacity (2 runners)")])
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await agent.close()


async def test_no_agent_yet_is_unavailable(server: ServerApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await sgrpc.ShoesServiceStub(ch).AddInstance(spb.AddInstanceRequest(runner_name="x"), metadata=MD,
                                                         timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_token_required_and_health_open(server: ServerApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await sgrpc.ShoesServiceStub(ch).DeleteInstance(spb.DeleteInstanceRequest(cloud_id="x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await sgrpc.ShoesServiceStub(ch).DeleteInstance(spb.DeleteInstanceRequest(cloud_id="x"), timeout=5,
                                                            metadata=(("authorization", "Bearer wrong"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "shoes.vz.shoes.v1.ShoesService", "shoes.vz.agent.v1.AgentService"):
            r = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING


async def test_delete_for_offline_agent_is_carried_out_on_reconnect(server: ServerApp) -> None:
    agent = await connected_agent(server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        call = asyncio.ensure_future(stub.AddInstance(spb.AddInstanceRequest(runner_name="d"), metadata=MD,
                                                      timeout=10))
        cmd = (await agent.next_command()).create_runner
        agent.send([running(cmd, agent.agent_id)], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
        reply = await call
        await agent.close()
        await eventually(lambda: agent.agent_id not in server.hub.connections)
        await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=MD, timeout=5)
        agent2 = ScriptedAgent(f"127.0.0.1:{server.port}")
        agent2.md = agent.md
        await agent2.connect(runners=[running(cmd, agent2.agent_id)])
        while (msg := await agent2.next_command()).WhichOneof("command") != "delete_runner":
            pass
        delete = msg.delete_runner
        assert delete.runner_id == cmd.runner_id
        agent2.send([], [apb.CommandAck(request_id=delete.request_id, ok=True)])
        row = await eventually(lambda: _deleted(server, cmd.runner_id))
        assert row
        await agent2.close()


async def _deleted(server: ServerApp, runner_id: str) -> bool:
    row = await server.store.call(server.store.runner, runner_id)
    return row is not None and row.deleted_at is not None
