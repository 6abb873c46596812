"""Resource types end to end on the sim stack: `small` and `large` land on different templates, and
the fast path boots each VM with its template's CPU and memory, unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from stack_fixtures import TOKEN, agent_settings, eventually, have_sshd, require, server_settings

from shoes_vz.agent.app import Agent
from shoes_vz.server.app import ServerApp
from shoes_vz.template import init_sim
from shoes_vz.vm.drivers.vz_config import LaunchSpec
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

GIB = 1024**3
MD = (("authorization", f"Bearer {TOKEN}"),)


@pytest.mark.parametrize("mapped", [True, False], ids=["server-mapping", "templates-own-types"])
async def test_small_and_large_land_on_their_templates_with_their_cpu_and_memory(tmp_path: Path,
                                                                                 mapped: bool) -> None:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    templates = tmp_path / "templates"
    # with a mapping, the templates' own resource_types say the opposite: the mapping decides
    small = await asyncio.to_thread(init_sim, templates, "mac-small", cpu_count=2, memory_bytes=3 * GIB,
                                    resource_types=["large" if mapped else "small"])
    large = await asyncio.to_thread(init_sim, templates, "mac-large", cpu_count=6, memory_bytes=12 * GIB,
                                    resource_types=["small" if mapped else "large"])
    mapping = {"small": "mac-small", "large": "mac-large"} if mapped else {}
    async with ServerApp(server_settings(tmp_path, resource_types=mapping)) as server:
        async with Agent(agent_settings(tmp_path, server.port, max_runners=2)) as agent:
            await eventually(lambda: agent.agent_id in server.hub.connections, timeout=10)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
                stub = sgrpc.ShoesServiceStub(ch)
                replies = await asyncio.gather(*(
                    stub.AddInstance(spb.AddInstanceRequest(runner_name=f"job-{t}", setup_script="true\n",
                                                            resource_type=t), metadata=MD, timeout=60)
                    for t in ("small", "large")))
            for reply, rtype, template in zip(replies, ("small", "large"), (small, large), strict=True):
                runner = agent.runners[reply.cloud_id.removeprefix("shoes-vz-")]
                assert runner.spec.template.name == template.name
                assert reply.resource_type == runner.spec.resource_type == rtype
                meta = runner.bundle.read_metadata()  # RuntimeMetadata.json: what `vm run` boots
                assert meta["template"] == template.name
                assert (meta["cpu_count"], meta["memory_bytes"]) == (template.meta.cpu_count,
                                                                     template.meta.memory_bytes)
                spec = LaunchSpec.from_metadata(meta)  # the vz driver's VM configuration reads exactly this
                assert (spec.cpu_count, spec.memory_bytes) == (template.meta.cpu_count, template.meta.memory_bytes)
                row = await server.store.call(server.store.runner, runner.runner_id)
                assert row is not None and row.template == template.name

