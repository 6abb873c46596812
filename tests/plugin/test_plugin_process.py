"""shoes-vz-plugin under a go-plugin-style launch: cookie, handshake, go-plugin services, logs, exit."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoes_vz.plugin.host import PluginProcess, host_env
from shoes_vz.wire import goplugin_pb2, goplugin_pb2_grpc

HANDSHAKE_RE = re.compile(rb"^1\|1\|tcp\|127\.0\.0\.1:(\d+)\|grpc\n")
HCLOG_PREFIX_RE = re.compile(r"^\[(TRACE|DEBUG|INFO|WARN|ERROR)\] ")


def _run(plugin_path: Path, env: dict[str, str], timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(plugin_path)], env=env, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("cookie", [None, "", "wrong"])
def test_refuses_without_magic_cookie(plugin_path: Path, cookie: str | None) -> None:
    env = {k: v for k, v in host_env({"SHOESVZ_SERVER_ADDR": "127.0.0.1:1"}).items()
           if k != "SHOES_PLUGIN_MAGIC_COOKIE"}
    if cookie is not None:
        env["SHOES_PLUGIN_MAGIC_COOKIE"] = cookie
    done = _run(plugin_path, env)
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"plugin for myshoes" in done.stderr and b"PLUGIN" in done.stderr


def test_config_error_exits_1_before_the_handshake(plugin_path: Path) -> None:
    env = host_env({"SHOESVZ_SERVER_ADDR": ""})
    done = _run(plugin_path, env)
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().startswith("[ERROR] ")
    assert "SHOESVZ_SERVER_ADDR" in done.stderr.decode()


def test_refuses_plaintext_to_a_remote_server(plugin_path: Path) -> None:
    done = _run(plugin_path, host_env({"SHOESVZ_SERVER_ADDR": "192.0.2.1:50051"}))
    assert done.returncode == 1 and done.stdout == b""
    assert "SHOESVZ_TLS_CA" in done.stderr.decode()


def test_handshake_line_is_first_and_port_in_range(plugin_path: Path, plugin_env) -> None:
    env = plugin_env("127.0.0.1:1")
    proc = subprocess.Popen([str(plugin_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = HANDSHAKE_RE.match(first)
        assert m, first
        assert 10000 <= int(m.group(1)) <= 25000
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=2):
            pass
    finally:
        proc.kill()
        proc.wait()


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port < 65535:
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


def test_honours_a_narrow_port_range_and_skips_a_busy_port(plugin_path: Path, plugin_env) -> None:
    port = _free_port_pair()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        env = plugin_env("127.0.0.1:1", PLUGIN_MIN_PORT=str(port), PLUGIN_MAX_PORT=str(port + 1))
        with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
            assert p.handshake.address == f"127.0.0.1:{port + 1}"


def test_no_free_port_in_range_fails_cleanly(plugin_path: Path, plugin_env) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(plugin_path, plugin_env("127.0.0.1:1", PLUGIN_MIN_PORT=str(port), PLUGIN_MAX_PORT=str(port)))
    assert done.returncode == 1 and done.stdout == b""
    assert "no free TCP port" in done.stderr.decode()


def test_go_plugin_services(plugin_path: Path, plugin_env) -> None:
    with PluginProcess.launch(plugin_path, plugin_env("127.0.0.1:1"), stderr=subprocess.DEVNULL) as p:
        health = health_pb2_grpc.HealthStub(p.channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        # StreamStdio exists and stays open (no data: logs go to stderr)
        stream = goplugin_pb2_grpc.GRPCStdioStub(p.channel).StreamStdio(
            goplugin_pb2.google_dot_protobuf_dot_empty__pb2.Empty(), timeout=0.3)
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the broker stream is accepted too
        broker = goplugin_pb2_grpc.GRPCBrokerStub(p.channel).StartStream(iter(()), timeout=2)
        assert list(broker) == []


def test_shutdown_exits_promptly(plugin_path: Path, plugin_env) -> None:
    with PluginProcess.launch(plugin_path, plugin_env("127.0.0.1:1"), stderr=subprocess.DEVNULL) as p:
        goplugin_pb2_grpc.GRPCControllerStub(p.channel).Shutdown(goplugin_pb2.Empty(), timeout=5)
        p.proc.wait(timeout=1.5)  # go-plugin waits 2 s before SIGKILL; we must be gone well before
        assert p.proc.returncode == 0
        p.kill()
        assert p.graceful


def test_kill_is_graceful(plugin_path: Path, plugin_env) -> None:
    p = PluginProcess.launch(plugin_path, plugin_env("127.0.0.1:1"), stderr=subprocess.DEVNULL)
    p.kill()
    assert p.graceful and p.proc.returncode == 0


def test_disable_shutdown_switch_removes_the_controller(plugin_path: Path, plugin_env) -> None:
    env = plugin_env("127.0.0.1:1", SHOESVZ_PLUGIN_DISABLE_SHUTDOWN="1")
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        with pytest.raises(grpc.RpcError) as err:
            goplugin_pb2_grpc.GRPCControllerStub(p.channel).Shutdown(goplugin_pb2.Empty(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        p.proc.send_signal(signal.SIGTERM)
        p.proc.wait(timeout=5)


def test_sigint_is_ignored_and_sigterm_stops(plugin_path: Path, plugin_env) -> None:
    with PluginProcess.launch(plugin_path, plugin_env("127.0.0.1:1"), stderr=subprocess.DEVNULL) as p:
        p.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert p.proc.poll() is None
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(timeout=5) == 0


def test_text_logs_carry_hclog_level_prefixes(plugin_path: Path, plugin_env, tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    with log.open("wb") as f, PluginProcess.launch(plugin_path, plugin_env("127.0.0.1:1"), stderr=f.fileno()):
        pass
    lines = log.read_text().splitlines()
    assert lines, "the plugin logs at least its start"
    for line in lines:
        assert HCLOG_PREFIX_RE.match(line), line
    assert any(line.startswith("[INFO]  shoes-vz-plugin: serving") for line in lines)


def test_json_logs_parse_like_hclog(plugin_path: Path, plugin_env, tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    env = plugin_env("127.0.0.1:1", SHOESVZ_PLUGIN_LOG_FORMAT="json", SHOESVZ_PLUGIN_LOG_LEVEL="debug")
    with log.open("wb") as f, PluginProcess.launch(plugin_path, env, stderr=f.fileno()):
        pass
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries
    for e in entries:
        assert e["@level"] in ("trace", "debug", "info", "warn", "error")
        assert isinstance(e["@message"], str)
        # go-plugin parses @timestamp with Go layout "2006-01-02T15:04:05.000000Z07:00"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)", e["@timestamp"])
        datetime.fromisoformat(e["@timestamp"])


def test_version_flag(plugin_path: Path) -> None:
    done = subprocess.run([str(plugin_path), "--version"], capture_output=True, timeout=10)
    assert done.returncode == 0 and done.stdout.startswith(b"shoes-vz-plugin ")
