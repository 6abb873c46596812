"""Attack 5 of issue 11: the registration token inside a setup_script lingered in the outbox's `payload`
column and in `server.db`'s WAL, never purged, in files anyone on the host could read (0644). Now the
script is dropped once the agent acknowledged the create, the bytes are gone from the db, -wal and
-shm files too, it is never logged, and the files are 0600 in a 0700 directory (docs/security.md §4)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from stack_fixtures import CLI, cli_env, eventually, have_sshd, make_stack, one_error_line, require, server_settings

from shoes_vz.core.errors import ConfigError
from shoes_vz.server.app import ServerApp
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def marker() -> str:
    return "ghr-registration-token-" + secrets.token_hex(12)


def script_with(token: str) -> str:
    """A setup script carrying `token` as GitHub's does, long enough to spill into overflow pages."""
    padding = "".join(f"# {token} line {i}\n" for i in range(4000))  # ~200 kB
    return f"#!/bin/sh\n./config.sh --url https://github.com/o/r --token {token} --ephemeral\n{padding}true\n"


def files_of(db: Path) -> list[Path]:
    return [p for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if p.exists()]


def holding(db: Path, token: str) -> list[str]:
    """The database files whose raw bytes still hold `token` (or a 16-byte piece of it)."""
    needles = [token.encode(), token.encode()[-16:]]
    return [p.name for p in files_of(db) if any(n in p.read_bytes() for n in needles)]


async def test_the_script_is_gone_from_db_wal_and_shm_once_acknowledged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = marker()
    async with make_stack(tmp_path) as stack:
        db = stack.server.settings.db_path
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            reply = await stack.add(stub, "job-secret", script=script_with(token), timeout=90)
            runner_id = reply.cloud_id.removeprefix("shoes-vz-")
            store = stack.server.store
            await eventually(lambda: store.call(store.create_acked, runner_id), timeout=20)
            assert holding(db, token) == [], "the script outlived the agent's ack"
            # freed pages are zeroed on any SQLite build (Debian's defaults to it, others do not)
            assert store.db.execute("PRAGMA secure_delete").fetchone()[0] == 1
            for p in files_of(db):
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
            assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
            assert {p.name for p in files_of(db)} >= {"server.db", "server.db-wal", "server.db-shm"}
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=stack.metadata,
                                      timeout=10)

            async def gone() -> bool:
                row = await store.call(store.runner, runner_id)
                return row is not None and row.deleted_at is not None

            await eventually(gone, timeout=30)
            assert holding(db, token) == []
    assert holding(db, token) == []  # and after the server closed its database
    said = [r for r in caplog.records if token in r.getMessage()]
    assert said == [], f"logged: {said[0].name} {said[0].getMessage()[:200]}"


async def test_a_create_deleted_before_any_ack_takes_its_script_along(tmp_path: Path) -> None:
    """The agent never acknowledges: the AddInstance deadline passes, the runner is deleted, and the
    script is not left waiting in the outbox for a reconnect that may never come."""
    from attackers import Agent, add_instance

    token = marker()
    async with ServerApp(server_settings(tmp_path, add_instance_timeout=1.0)) as server:
        a = f"127.0.0.1:{server.port}"
        agent = await Agent(a, "agent-a").enroll()
        await agent.register()
        agent.open()  # online, so the runner is placed on it; it never answers the create
        await eventually(lambda: "agent-a" in server.hub.connections)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await add_instance(a, "job-1", setup_script=script_with(token))  # nobody runs it
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert holding(server.settings.db_path, token) == []
        pending = await server.store.call(server.store.pending_commands, "agent-a")
        assert [c.kind for c in pending] == ["delete"]
        await agent.close()


async def test_database_files_with_wide_modes_are_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    db = d / "server.db"
    async with ServerApp(server_settings(tmp_path, db_path=db)):
        pass
    for p in files_of(db):
        os.chmod(p, 0o644)
    os.chmod(d, 0o755)
    caplog.set_level(logging.WARNING, logger="shoes_vz.server.db_files")
    async with ServerApp(server_settings(tmp_path, db_path=db)) as server:
        await server.store.call(server.store.agents)  # opened and in use
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        for p in files_of(db):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert any("was drwxr-xr-x; now drwx------" in r.getMessage() for r in caplog.records)


async def test_a_shared_directory_for_the_database_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    with pytest.raises(ConfigError, match="shared with other users"):
        async with ServerApp(server_settings(tmp_path, db_path=shared / "server.db")):
            pass
    assert not (shared / "server.db").exists()  # nothing half-made
    r = await asyncio.to_thread(subprocess.run, [*CLI, "server", "--db", str(shared / "server.db"), "--listen",
                                                 "127.0.0.1:0", "--metrics-listen", ""],
                                capture_output=True, text=True, timeout=60, env=cli_env())
    assert r.returncode == 1 and "shared with other users" in one_error_line(r.stderr)


async def test_a_database_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root (to give a directory to another user)")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        async with ServerApp(server_settings(tmp_path, db_path=theirs / "server.db")):
            pass


async def test_the_script_is_in_no_log_of_a_real_run(tmp_path: Path) -> None:
    """Server, agent and plugin as processes, at their most verbose, through a runner's whole life: the
    registration token in its script appears in none of their logs, nor in the database afterwards."""
    from shoes_vz.plugin.host import PluginProcess, host_env
    from shoes_vz.plugin.install import install_plugin
    from shoes_vz.stack import LocalStack
    from shoes_vz.wire import myshoes_pb2 as mpb

    require(have_sshd(), "OpenSSH sshd")
    token = marker()
    stack = LocalStack(tmp_path / "stack", verbose=True)
    plugin = await asyncio.to_thread(install_plugin, tmp_path / "shoes-vz-plugin")
    plugin_log = tmp_path / "plugin.log"
    env = host_env({"SHOESVZ_SERVER_ADDR": "", "SHOESVZ_TOKEN": stack.token, "SHOESVZ_PLUGIN_LOG_LEVEL": "trace"})

    def call(method: str, request: object) -> object:
        with open(plugin_log, "ab") as err, PluginProcess.launch(plugin, env, stderr=err.fileno()) as proc:
            return getattr(proc.shoes(), method)(request, timeout=120)

    try:
        await stack.start()
        env["SHOESVZ_SERVER_ADDR"] = stack.server_addr
        reply = await asyncio.to_thread(call, "AddInstance", mpb.AddInstanceRequest(
            runner_name="job-secret", setup_script=script_with(token), resource_type=mpb.Small))
        await asyncio.to_thread(call, "DeleteInstance", mpb.DeleteInstanceRequest(cloud_id=reply.cloud_id))
        runner_id = reply.cloud_id.removeprefix("shoes-vz-")
        await eventually(lambda: not any(r.get("runner_id") == runner_id
                                         for r in stack.runner_state().get("runners", [])), timeout=60)
        assert holding(stack.db_path, token) == []  # the server is still running here
    finally:
        await stack.stop()
    logs = {p.name: p.read_text(errors="replace") for p in (stack.root / "server.log", stack.root / "agent.log",
                                                           plugin_log)}
    assert all(logs.values()), {k: len(v) for k, v in logs.items()}  # they did log (debug, trace)
    assert "DEBUG" in logs["server.log"] and "DEBUG" in logs["agent.log"]
    assert [name for name, text in logs.items() if token in text] == []
    assert holding(stack.db_path, token) == []
