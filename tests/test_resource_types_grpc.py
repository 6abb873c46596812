"""Resource types over real TCP gRPC: what AddInstance answers for a type no template serves, and
how agents report their templates (registration and Sync) — scripted agents and the real one."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from stack_fixtures import agent_settings, eventually, server_settings
from test_server_grpc import MD, ScriptedAgent, connected_agent, running

from shoes_vz.agent.app import Agent
from shoes_vz.server.app import ServerApp
from shoes_vz.server.store import AgentRow, HeldTemplate
from shoes_vz.template import Template, init_sim
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

GIB = 1024**3
MAPPING = {"small": "macos-15", "large": "macos-15-big"}


@pytest.fixture
async def mapped_server(tmp_path: Path) -> AsyncIterator[ServerApp]:
    async with ServerApp(server_settings(tmp_path, resource_types=MAPPING)) as app:
        yield app


async def add(server: ServerApp, name: str, resource_type: str, timeout: float = 5) -> spb.AddInstanceResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        return await sgrpc.ShoesServiceStub(ch).AddInstance(
            spb.AddInstanceRequest(runner_name=name, resource_type=resource_type), metadata=MD, timeout=timeout)


async def refused(server: ServerApp, name: str, resource_type: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await add(server, name, resource_type)
    return e.value


async def stored_agents(server: ServerApp) -> list[AgentRow]:
    return await server.store.call(server.store.agents)


async def test_unservable_types_are_invalid_argument_with_the_mapping(mapped_server: ServerApp) -> None:
    agent = await connected_agent(mapped_server, templates=[apb.Template(name="macos-15")])
    e = await refused(mapped_server, "j-medium", "medium")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == ("resource_type 'medium' is not in the server's resource_types mapping; "
                           "server resource_types: small → macos-15, large → macos-15-big")
    e = await refused(mapped_server, "j-large", "XLarge2")  # upstream's alias, normalized first
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "resource_type '2xlarge' is not in" in e.details()
    e = await refused(mapped_server, "j-large", "large")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == ("resource_type 'large' maps to template 'macos-15-big', which no registered agent "
                           "holds (agents hold: macos-15); server resource_types: small → macos-15, "
                           "large → macos-15-big")
    assert await mapped_server.store.call(mapped_server.store.live_runners) == []

    call = asyncio.ensure_future(add(mapped_server, "j-small", "", timeout=10))  # "" → default: small
    cmd = (await agent.next_command()).create_runner
    assert (cmd.resource_type, cmd.template) == ("small", "macos-15")
    agent.send([running(cmd, agent.agent_id)], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
    assert (await call).resource_type == "small"

    await agent.close()  # its template is still registered: an offline agent may come back
    await eventually(lambda: agent.agent_id not in mapped_server.hub.connections)
    e = await refused(mapped_server, "j-small-2", "small")
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_fallback_message_names_what_the_agents_templates_serve(tmp_path: Path) -> None:
    async with ServerApp(server_settings(tmp_path)) as server:
        agent = await connected_agent(server, templates=[
            apb.Template(name="t", resource_types=["small", "Medium", "xlarge3", "bogus"])])
        e = await refused(server, "j", "nano")
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.details().startswith("no template on any registered agent serves resource_type 'nano'; the "
                                      "agents' templates serve: small, medium, 3xlarge (no server")
        (row,) = await stored_agents(server)
        assert row.templates[0].resource_types == ("small", "medium", "3xlarge")  # myshoes' spelling
        await agent.close()


async def test_templates_follow_reregistration_and_sync_reports(mapped_server: ServerApp) -> None:
    agent = await connected_agent(mapped_server, templates=[apb.Template(name="macos-15")])
    assert (await refused(mapped_server, "j", "large")).code() == grpc.StatusCode.INVALID_ARGUMENT
    big = apb.Template(name="macos-15-big", version="2", digest="d" * 64, cpu_cores=8, memory_bytes=16 * GIB,
                       warm_slots=2, free_warm_slots=1)
    agent.send(templates=[apb.Template(name="macos-15"), big])  # frozen while the agent runs
    await eventually(lambda: _holds(mapped_server, "macos-15-big"))
    (row,) = await stored_agents(mapped_server)
    assert row.templates[1] == HeldTemplate("macos-15-big", version="2", digest="d" * 64, cpu_cores=8,
                                            memory_bytes=16 * GIB, warm_slots=2, free_warm_slots=1)
    agent.send()  # a Sync without a template report keeps what was reported
    agent.outgoing.put_nowait(apb.SyncRequest(agent_id=agent.agent_id))  # the upstream agent's form
    # processed in order: the delete this orphan draws proves the two above were seen
    agent.send([apb.Runner(runner_id="00000000000000bb", state=apb.RUNNER_STATE_RUNNING)])
    assert (await agent.next_command()).delete_runner.runner_id == "00000000000000bb"
    assert [t.name for t in (await stored_agents(mapped_server))[0].templates] == ["macos-15", "macos-15-big"]

    call = asyncio.ensure_future(add(mapped_server, "j-large", "large", timeout=10))
    cmd = (await agent.next_command()).create_runner
    assert cmd.template == "macos-15-big"
    agent.send([running(cmd, agent.agent_id)], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
    await call
    await agent.close()

    again = ScriptedAgent(f"127.0.0.1:{mapped_server.port}", templates=[apb.Template(name="macos-15")])
    again.md = agent.md
    await again.connect(runners=[running(cmd, again.agent_id)])  # re-registration replaces the list
    await eventually(lambda: _holds(mapped_server, "macos-15-big", False))
    await again.close()


async def _holds(server: ServerApp, name: str, expected: bool = True) -> bool:
    return any(t.name == name for a in await stored_agents(server) for t in a.templates) == expected


class WarmAgent(Agent):
    """The real agent with warm slots standing in for the ones not built yet (2 per template, 1 free)."""

    def warm_slot_counts(self, template: Template) -> tuple[int, int]:
        return (2, 1)


async def test_real_agent_reports_templates_and_one_frozen_while_it_runs(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    small = await asyncio.to_thread(init_sim, templates, "macos-15", cpu_count=3, memory_bytes=5 * GIB,
                                    resource_types=["small", "medium"])
    async with ServerApp(server_settings(tmp_path, resource_types=MAPPING)) as server:
        agent = WarmAgent(agent_settings(tmp_path, server.port))
        async with agent:
            await eventually(lambda: agent.agent_id in server.hub.connections, timeout=10)
            (row,) = await stored_agents(server)
            assert row.templates == [HeldTemplate(
                "macos-15", version="1", digest=small.meta.fingerprint(), resource_types=("small", "medium"),
                cpu_cores=3, memory_bytes=5 * GIB, warm_slots=2, free_warm_slots=1)]
            assert len(row.templates[0].digest) == 64
            assert server.scheduler.template_for(row, "large") is None

            big = await asyncio.to_thread(init_sim, templates, "macos-15-big", cpu_count=8,
                                          memory_bytes=16 * GIB, resource_types=["large"])
            # no restart: the next heartbeat (sync_interval 1 s) carries the new template
            await eventually(lambda: _holds(server, "macos-15-big"), timeout=10)
            (row,) = await stored_agents(server)
            held = server.scheduler.template_for(row, "large")
            assert held is not None and (held.digest, held.cpu_cores, held.memory_bytes) == (
                big.meta.fingerprint(), 8, 16 * GIB)


async def test_metrics_show_which_templates_the_fleet_holds(mapped_server: ServerApp) -> None:
    agent = await connected_agent(mapped_server, templates=[
        apb.Template(name="macos-15", warm_slots=2, free_warm_slots=1), apb.Template(name="macos-15-big")])
    other = await connected_agent(mapped_server, agent_id="agent-2", templates=[apb.Template(name="macos-15")])
    await other.close()
    await eventually(lambda: "agent-2" not in mapped_server.hub.connections)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{mapped_server.metrics_port}/metrics") as r:
            text = await r.text()
    for line in ('shoesvz_template_agents{status="online",template="macos-15"} 1.0',
                 'shoesvz_template_agents{status="offline",template="macos-15"} 1.0',
                 'shoesvz_template_agents{status="online",template="macos-15-big"} 1.0',
                 'shoesvz_template_warm_slots{state="total",template="macos-15"} 2.0',
                 'shoesvz_template_warm_slots{state="free",template="macos-15"} 1.0'):
        assert line in text.splitlines(), line
    await agent.close()


async def test_a_default_type_outside_the_mapping_is_warned_about(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = server_settings(tmp_path, resource_types={"large": "macos-15-big"})
    with caplog.at_level(logging.WARNING, logger="shoes_vz.server.app"):
        async with ServerApp(settings):
            pass
    assert "default_resource_type small is not in resource_types" in caplog.text


async def test_a_malformed_template_keeps_the_last_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    templates = tmp_path / "templates"
    await asyncio.to_thread(init_sim, templates, "macos-15", resource_types=["small"])
    async with ServerApp(server_settings(tmp_path)) as server:
        agent = Agent(agent_settings(tmp_path, server.port))
        async with agent:
            await eventually(lambda: _holds(server, "macos-15"), timeout=10)
            broken = templates / "half-copied"
            broken.mkdir()
            (broken / "TemplateMetadata.json").write_text('{"name": "half-copied", ')
            # two heartbeats later the server has heard from the agent and still holds its report
            counts = []
            for _ in range(2):
                since = time.time()
                await eventually(lambda since=since: _seen_after(server, since), timeout=10)
                counts.append(caplog.text.count("refusing template"))
            assert [t.name for t in (await stored_agents(server))[0].templates] == ["macos-15"]
            assert counts[0] >= 1 and counts[1] == counts[0]  # once per problem, not per heartbeat
            assert "half-copied" in caplog.text
            shutil.rmtree(broken)
            await asyncio.to_thread(init_sim, templates, "macos-15-big", resource_types=["large"])
            await eventually(lambda: _holds(server, "macos-15-big"), timeout=10)


async def _seen_after(server: ServerApp, t: float) -> bool:
    return all(a.last_seen > t for a in await stored_agents(server))
