"""Shared test helpers (imported by conftest.py and tests): `sim_stack`, a real server and a real
sim agent in this process over TCP on loopback, with real `vm run` processes, OpenSSH sshd guests and
runner-agents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from shoes_vz.agent.app import Agent
from shoes_vz.config import AgentSettings, ServerSettings
from shoes_vz.server.app import ServerApp
from shoes_vz.template import Template, init_sim
from shoes_vz.vm.clone import can_reflink
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import agent_pb2_grpc as agrpc
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

IN_CI = bool(os.environ.get("CI"))
TOKEN = "test-shoes-token-0123456789"          # the myshoes side's (server.shoes_token, SHOESVZ_TOKEN)
ENROLLMENT_TOKEN = "test-enrollment-token-0123"  # an agent's first contact (server/agent enrollment_token)
CLI = [sys.executable, "-m", "shoes_vz.cli.main"]  # `shoes-vz` as a person runs it


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without SHOESVZ_* settings (a developer's own must not leak in), wide output; servers
    without the status page (its default port is one for the whole machine; a test that wants it says so)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SHOESVZ_")}, "COLUMNS": "300",
            "SHOESVZ_SERVER_STATUS_LISTEN": "", **extra}


def one_error_line(stderr: str) -> str:
    """The single `error: …` line on stderr, after checking there is no traceback and nothing else."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def require(condition: bool, what: str) -> None:
    """Tests that need real parts fail in CI when a part is missing; elsewhere they skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI is set but {what} is missing: install it (scripts/setup test does, as root)")
    pytest.skip(f"{what} is missing")


@pytest.fixture
def no_clone_dir() -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm), which never clones: the "volume cannot clone" paths run on every
    machine, whatever filesystem holds the test's tmp_path."""
    shm = Path("/dev/shm")
    require(shm.is_dir() and os.access(shm, os.W_OK), "a writable tmpfs at /dev/shm")
    d = Path(tempfile.mkdtemp(dir=shm, prefix="shoes-vz-noclone-"))
    try:
        yield d
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(d)], check=False)  # frozen templates are read-only
        shutil.rmtree(d, ignore_errors=True)


def namespaced_missing() -> list[str]:
    from shoes_vz.vm.drivers.sim_options import namespaced_missing as missing

    return missing()


def require_namespaced() -> None:
    """For tests of the namespaced sim guest (root on Linux, util-linux, iproute2, dnsmasq, udhcpc)."""
    missing = namespaced_missing()
    require(not missing, "the namespaced sim (" + ", ".join(missing) + ")")


def have_sshd() -> bool:
    return bool(shutil.which("sshd") or os.access("/usr/sbin/sshd", os.X_OK))


async def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class SimStack:
    root: Path
    server: ServerApp
    agent: Agent
    template: Template
    token: str = TOKEN

    @property
    def server_addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.server_addr)

    async def add(self, stub: sgrpc.ShoesServiceStub, name: str, script: str = "true\n",
                  timeout: float = 60, **kw: Any) -> spb.AddInstanceResponse:
        return await stub.AddInstance(spb.AddInstanceRequest(runner_name=name, setup_script=script, **kw),
                                      metadata=self.metadata, timeout=timeout)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def enroll(channel: grpc.aio.Channel, agent_id: str, token: str = ENROLLMENT_TOKEN
                 ) -> tuple[tuple[str, str], ...]:
    """Enrol `agent_id` as an agent does; the metadata its later calls carry."""
    reply = await agrpc.AgentServiceStub(channel).Enroll(apb.EnrollRequest(agent_id=agent_id, hostname="test"),
                                                         metadata=bearer(token), timeout=10)
    return (("authorization", f"Agent {agent_id}:{reply.agent_secret}"),)


def server_settings(root: Path, **kw: Any) -> ServerSettings:
    base: dict[str, Any] = dict(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", status_listen="127.0.0.1:0",
                                db_path=root / "server.db",
                                shoes_token=TOKEN, enrollment_token=ENROLLMENT_TOKEN, sync_interval=1.0)
    return ServerSettings(**{**base, **kw})


def agent_settings(root: Path, server_port: int, **kw: Any) -> AgentSettings:
    base: dict[str, Any] = dict(
        server_addr=f"127.0.0.1:{server_port}", enrollment_token=ENROLLMENT_TOKEN, driver="sim",
        state_dir=root / "agent",
        templates_dir=root / "templates", runners_dir=root / "runners",
        runner_state_file=root / "runner-state.json", lease_file=root / "dhcpd_leases",
        notify_listen="0.0.0.0:0", metrics_listen="127.0.0.1:0", stop_grace=2.0,
        guest_poll_interval=0.2, allow_copy=not can_reflink(root),
        disk_reserve=1 << 30,  # a sim template's 64 GiB disk is sparse and never written: not the test's to need
    )
    base.update(kw)
    return AgentSettings(**base)


@contextlib.asynccontextmanager
async def make_stack(root: Path, *, max_runners: int = 2, template_kw: dict[str, Any] | None = None,
                     server_kw: dict[str, Any] | None = None, **agent_kw: Any) -> AsyncIterator[SimStack]:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    template = await asyncio.to_thread(init_sim, root / "templates", "sim-test", **(template_kw or {}))
    async with ServerApp(server_settings(root, **(server_kw or {}))) as server:
        agent_kw.setdefault("host_vm_limit", max_runners)  # sim guests: no Apple limit of 2 to respect
        agent = Agent(agent_settings(root, server.port, max_runners=max_runners, **agent_kw))
        async with agent:
            await eventually(lambda: agent.agent_id in server.hub.connections, timeout=10)
            yield SimStack(root, server, agent, template)


@pytest.fixture
async def sim_stack(tmp_path: Path) -> AsyncIterator[SimStack]:
    async with make_stack(tmp_path) as stack:
        yield stack


@pytest.fixture(params=["namespaced", "loopback"])
async def any_sim_stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SimStack]:
    """The stack in either sim mode (as root, a loopback guest too logs in as an unprivileged user of its own)."""
    if request.param == "namespaced":
        require_namespaced()
        async with make_stack(tmp_path) as stack:
            yield stack
        return
    async with make_stack(tmp_path, driver_options={"mode": "loopback"}) as stack:
        yield stack
