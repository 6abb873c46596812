"""Safe defaults (issue 11, "What to build" 6; docs/security.md §6): the server never listens off loopback
without authentication — a tokenless server with allow_plaintext started there without a word — and
says once at start when it runs open on loopback. A config with the old single `token` stops it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import grpc
import pytest
from attackers import AGENT, SHOES, unary
from stack_fixtures import CLI, cli_env, one_error_line

from shoes_vz.config import ServerSettings
from shoes_vz.core.errors import ConfigError
from shoes_vz.server.app import ServerApp
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2 as spb

S, E = "s" * 24, "e" * 24


def settings(tmp_path: Path, **kw: object) -> ServerSettings:
    return ServerSettings(db_path=tmp_path / "db" / "server.db", metrics_listen="",  # type: ignore[arg-type]
                          status_listen="", **kw)


@pytest.mark.parametrize("kw,says", [
    (dict(), "without authentication: set server.shoes_token and server.enrollment_token"),
    (dict(allow_plaintext=True), "without authentication"),
    (dict(shoes_token=S, allow_plaintext=True), "without authentication: set server.enrollment_token"),
    (dict(enrollment_token=E, allow_plaintext=True), "without authentication: set server.shoes_token"),
    (dict(shoes_token=S, enrollment_token=E), "refusing plaintext gRPC"),
])
async def test_off_loopback_the_server_refuses_to_start_open(tmp_path: Path, kw: dict[str, object],
                                                             says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        async with ServerApp(settings(tmp_path, listen="0.0.0.0:0", **kw)):
            pass
    assert not (tmp_path / "db").exists()  # refused before anything was made


async def test_off_loopback_with_both_tokens_and_plaintext_allowed_it_starts(tmp_path: Path) -> None:
    async with ServerApp(settings(tmp_path, listen="0.0.0.0:0", shoes_token=S, enrollment_token=E,
                                  allow_plaintext=True)) as server:
        assert await unary(f"127.0.0.1:{server.port}", SHOES + "DeleteInstance",
                           spb.DeleteInstanceRequest(cloud_id="x")) == grpc.StatusCode.UNAUTHENTICATED


async def test_open_on_loopback_warns_once_and_still_binds_agents(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoes_vz.server.app")
    async with ServerApp(settings(tmp_path, listen="127.0.0.1:0")) as server:
        a = f"127.0.0.1:{server.port}"
        assert await unary(a, SHOES + "DeleteInstance", spb.DeleteInstanceRequest(cloud_id="x")) == \
            grpc.StatusCode.NOT_FOUND  # open: no token configured
        assert await unary(a, AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-a")) == grpc.StatusCode.OK
        # an agent is an identity even here: no credentials, no agent
        assert await unary(a, AGENT + "RegisterAgent", apb.RegisterAgentRequest(agent_id="agent-a")) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert await unary(a, AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-a")) == \
            grpc.StatusCode.PERMISSION_DENIED
    warned = [r.getMessage() for r in caplog.records if r.name == "shoes_vz.server.app"]
    assert len(warned) == 1 and "no shoes_token and no enrollment_token" in warned[0]
    assert "loopback only" in warned[0]


@pytest.mark.parametrize("config,env", [
    ('[server]\ntoken = "the-old-single-token-value"\n', {}),
    ('[server]\n', {"SHOESVZ_SERVER_TOKEN": "the-old-single-token-value"}),
])
async def test_the_old_token_key_stops_the_server_naming_its_replacements(tmp_path: Path, config: str,
                                                                          env: dict[str, str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config + f'db_path = "{tmp_path / "db" / "server.db"}"\n')
    r = await asyncio.to_thread(subprocess.run, [*CLI, "server", "-c", str(cfg)], capture_output=True, text=True,
                                timeout=60, env=cli_env(**env))
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and "server.shoes_token" in line and "server.enrollment_token" in line
    assert "the-old-single-token-value" not in r.stderr  # never echoed


async def test_the_old_agent_token_key_names_enrollment_token(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agent]\ntoken = "the-old-single-token-value"\n')
    r = await asyncio.to_thread(subprocess.run, [*CLI, "agent", "-c", str(cfg)], capture_output=True, text=True,
                                timeout=60, env=cli_env())
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and "agent.enrollment_token" in line and "the-old-single-token-value" not in line


def test_weak_or_shared_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ServerSettings(shoes_token="short")
    with pytest.raises(ValueError, match="each role needs its own"):
        ServerSettings(shoes_token=S, enrollment_token=S)
