"""One process per role and resource: a second server on a taken port or a held database, a second
agent on a held state directory — each refused, naming the first; stale locks taken over."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stack_fixtures import CLI, agent_settings, cli_env, eventually, one_error_line, server_settings

from shoes_vz.agent.app import Agent
from shoes_vz.agent.credential import SECRET_FILE
from shoes_vz.server.app import ServerApp
from shoes_vz.stack import free_port
from shoes_vz.template import init_sim


def _serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return r.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def server_process(tmp: Path, listen: str, db: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([*CLI, "server", "--listen", listen, "--metrics-listen", "", "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        deadline = time.monotonic() + 30
        while not _serving(listen):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the first server never served"
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _second(*args: str) -> subprocess.CompletedProcess[str]:
    """A second process, which must give up at once (the old code served on: the timeout is the failure)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, env=cli_env())


def test_a_second_server_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """gRPC sets SO_REUSEPORT by default: the second server used to start and take half the calls."""
    addr = f"127.0.0.1:{free_port()}"
    with server_process(tmp_path, addr, tmp_path / "a.db") as first:
        r = _second("server", "--listen", addr, "--metrics-listen", "", "--db", str(tmp_path / "b.db"))
        line = one_error_line(r.stderr)
        assert r.returncode == 1
        assert f"cannot listen on {addr}: the port is in use by pid {first.pid}" in line and "--listen" in line
        assert _serving(addr) and first.poll() is None  # the first one is untouched


def test_a_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    db = tmp_path / "server.db"
    with server_process(tmp_path, addr, db) as first:
        r = _second("server", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--db", str(db))
        line = one_error_line(r.stderr)
        assert r.returncode == 1
        assert f"the database {db} is in use by pid {first.pid} (shoes-vz server on {addr}" in line
        assert "--db" in line


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from shoes_vz.core.pidlock import PIDLock

    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "server.db.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "role": "server", "address": "127.0.0.1:1"}))

    async def main() -> None:
        async with ServerApp(server_settings(tmp_path)) as app:
            holder = app.lock.holder()
            assert holder is not None and holder.pid == os.getpid() and holder.address.endswith(f":{app.port}")
    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # silently
    assert PIDLock(lock, "server").holder() is None  # released at stop


async def test_a_second_agent_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """Two agents on one state directory share an agent id and used to knock each other off the server."""
    await asyncio.to_thread(init_sim, tmp_path / "templates", "sim-test")
    async with ServerApp(server_settings(tmp_path)) as server:
        async with Agent(agent_settings(tmp_path, server.port)) as first:
            cfg = tmp_path / "agent.toml"
            s = first.settings
            cfg.write_text(f'[agent]\nserver_addr = "127.0.0.1:{server.port}"\nstate_dir = "{s.state_dir}"\n'
                           f'templates_dir = "{s.templates_dir}"\nrunners_dir = "{tmp_path / "runners2"}"\n'
                           f'driver = "sim"\nnotify_listen = "127.0.0.1:0"\nmetrics_listen = ""\n'
                           f'runner_state_file = "{tmp_path / "state2.json"}"\nallow_copy = true\n')
            r = await asyncio.to_thread(_second, "agent", "--config", str(cfg))
            line = one_error_line(r.stderr)
            assert r.returncode == 1
            assert f"the agent state directory {s.state_dir} is in use by pid {os.getpid()} (shoes-vz agent" in line
            assert f"agent id {first.agent_id}" in line and "agent.state_dir" in line
            assert first.agent_id in server.hub.connections  # the first agent was never knocked off


async def test_an_agent_object_refuses_a_held_state_directory(tmp_path: Path) -> None:
    from shoes_vz.core.errors import InUse

    await asyncio.to_thread(init_sim, tmp_path / "templates", "sim-test")
    async with ServerApp(server_settings(tmp_path)) as server:
        async with Agent(agent_settings(tmp_path, server.port)):
            with pytest.raises(InUse, match="is in use by pid"):
                await Agent(agent_settings(tmp_path, server.port)).start()


async def test_the_server_names_two_agents_sharing_one_agent_id(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A copied state directory (the agent-id and agent-secret files on two hosts) is the other way to
    get there: the server log says so instead of showing agents flapping without a cause."""
    await asyncio.to_thread(init_sim, tmp_path / "templates", "sim-test")
    caplog.set_level(logging.INFO)
    async with ServerApp(server_settings(tmp_path)) as server:
        a = Agent(agent_settings(tmp_path, server.port, state_dir=tmp_path / "a", runners_dir=tmp_path / "ra"))
        b = Agent(agent_settings(tmp_path, server.port, state_dir=tmp_path / "b", runners_dir=tmp_path / "rb",
                                 runner_state_file=tmp_path / "b.json"))
        async with a:
            await eventually(lambda: a.agent_id in server.hub.connections, timeout=20)
            (tmp_path / "b").mkdir()
            for name in ("agent-id", SECRET_FILE):  # the whole identity copied, as a copied state directory does
                (tmp_path / "b" / name).write_text((tmp_path / "a" / name).read_text())
            async with b:
                await eventually(lambda: [r for r in caplog.records if r.name == "shoes_vz.server.hub"], timeout=30)
    twins = [r for r in caplog.records if r.name == "shoes_vz.server.hub"]
    assert "two agents share one agent id" in twins[0].getMessage()
    assert twins[0].levelno == logging.ERROR and a.agent_id in twins[0].getMessage()
    assert len(twins) == 1  # once per interval, not once per flap
    aborted = [r for r in caplog.records if r.name == "shoes_vz.agent.sync" and "replaced this one" in r.getMessage()]
    assert aborted  # and the agent that was cut off is told why


async def test_a_copied_agent_id_without_its_secret_is_refused_and_told_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only the agent-id file copied: the second host cannot enrol that id, says so once, and the first
    agent's stream is never displaced."""
    await asyncio.to_thread(init_sim, tmp_path / "templates", "sim-test")
    caplog.set_level(logging.INFO)
    async with ServerApp(server_settings(tmp_path)) as server:
        a = Agent(agent_settings(tmp_path, server.port, state_dir=tmp_path / "a", runners_dir=tmp_path / "ra"))
        async with a:
            await eventually(lambda: a.agent_id in server.hub.connections, timeout=20)
            live = server.hub.connections[a.agent_id]
            (tmp_path / "b").mkdir()
            (tmp_path / "b" / "agent-id").write_text((tmp_path / "a" / "agent-id").read_text())
            b = Agent(agent_settings(tmp_path, server.port, state_dir=tmp_path / "b", runners_dir=tmp_path / "rb",
                                     runner_state_file=tmp_path / "b.json"))
            async with b:
                said = await eventually(lambda: [r for r in caplog.records if r.name == "shoes_vz.agent.sync"
                                                 and r.levelno == logging.ERROR], timeout=30)
                await asyncio.sleep(1.5)  # its retries meanwhile
            assert server.hub.connections[a.agent_id] is live
    assert "enrolled already" in said[0].getMessage() and "agent.state_dir" in said[0].getMessage()
    errors = [r for r in caplog.records if r.name == "shoes_vz.agent.sync" and r.levelno == logging.ERROR]
    assert len(errors) == 1  # once, not once per retry
