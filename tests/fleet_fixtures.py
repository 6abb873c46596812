"""A two-agent sim fleet for the fleet commands and the status page: one real server, two real sim agents
(in this process, over TCP), real `vm run` processes and sshd guests; the CLI as a person runs it."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from stack_fixtures import CLI, TOKEN, agent_settings, cli_env, eventually, have_sshd, require, server_settings

from shoes_vz.agent.app import Agent
from shoes_vz.config import ServerSettings
from shoes_vz.server.app import ServerApp
from shoes_vz.stack import free_port
from shoes_vz.template import init_sim
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

OPERATOR = "test-operator-token-0123456"
VIEWER = "test-viewer-token-01234567"


@dataclass
class Fleet:
    root: Path
    settings: ServerSettings
    server: ServerApp
    agents: list[Agent] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return self.settings.listen

    def agent_settings(self, i: int) -> object:
        (self.root / f"host{i}").mkdir(exist_ok=True)
        return agent_settings(self.root / f"host{i}", self.server.port, templates_dir=self.root / "templates",
                              max_runners=2, host_vm_limit=2)

    async def start_agent(self, i: int) -> Agent:
        agent = Agent(self.agent_settings(i))  # type: ignore[arg-type]
        await agent.start()
        await eventually(lambda: agent.agent_id in self.server.hub.connections, timeout=15)
        if i < len(self.agents):
            self.agents[i] = agent
        else:
            self.agents.append(agent)
        return agent

    async def restart_server(self) -> None:
        await self.server.stop()
        self.server = ServerApp(self.settings)
        await self.server.start()
        for a in self.agents:
            await eventually(lambda a=a: a.agent_id in self.server.hub.connections, timeout=30)  # type: ignore[misc]

    async def add(self, name: str, timeout: float = 60) -> spb.AddInstanceResponse:
        async with grpc.aio.insecure_channel(self.addr) as ch:
            return await sgrpc.ShoesServiceStub(ch).AddInstance(
                spb.AddInstanceRequest(runner_name=name, setup_script="echo hello\n", resource_type="small"),
                metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=timeout)

    async def delete_instance(self, cloud_id: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(self.addr) as ch:
            try:
                await sgrpc.ShoesServiceStub(ch).DeleteInstance(
                    spb.DeleteInstanceRequest(cloud_id=cloud_id), metadata=(("authorization", f"Bearer {TOKEN}"),),
                    timeout=20)
            except grpc.aio.AioRpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    async def cli(self, *args: str, token: str | None = OPERATOR, server: str | None = None
                  ) -> subprocess.CompletedProcess[str]:
        env = cli_env(SHOESVZ_ADMIN_SERVER_ADDR=server or self.addr, **(
            {"SHOESVZ_ADMIN_TOKEN": token} if token else {}))
        return await asyncio.to_thread(subprocess.run, [*CLI, *args], capture_output=True, text=True, env=env,
                                       timeout=60)


@contextlib.asynccontextmanager
async def two_agent_fleet(root: Path, **server_kw: object) -> AsyncIterator[Fleet]:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    await asyncio.to_thread(init_sim, root / "templates", "sim-test", disk_bytes=1 << 20)
    settings = server_settings(root, listen=f"127.0.0.1:{free_port()}", operator_token=OPERATOR,
                               viewer_token=VIEWER, **server_kw)
    server = ServerApp(settings)
    await server.start()
    fleet = Fleet(root, settings, server)
    try:
        await fleet.start_agent(0)
        await fleet.start_agent(1)
        yield fleet
    finally:
        for a in fleet.agents:
            await a.stop(tear_down=True)
        await fleet.server.stop()
