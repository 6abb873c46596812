"""How the plugin maps myshoes' calls onto ShoesService and the answers back (against a STAND-IN server).

These check the plugin's own mapping only; the real server is exercised by test_plugin_e2e.py.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shoes_vz.plugin.forward import ENUM_TO_NAME, resource_type_enum, resource_type_name
from shoes_vz.plugin.host import PluginProcess
from shoes_vz.wire import myshoes_pb2, shoes_pb2

RT = myshoes_pb2.ResourceType
MYSHOES_NAMES = ["nano", "micro", "small", "medium", "large", "xlarge", "2xlarge", "3xlarge", "4xlarge"]


@pytest.fixture
def plugin(plugin_path: Path, plugin_env, fake_shoes_server) -> Iterator[PluginProcess]:
    env = plugin_env(fake_shoes_server.addr, fake_shoes_server.token)
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        yield p


def _add(p: PluginProcess, **kw: object) -> myshoes_pb2.AddInstanceResponse:
    req = myshoes_pb2.AddInstanceRequest(runner_name=kw.pop("runner_name", "myshoes-job-1"), **kw)  # type: ignore[arg-type]
    return p.shoes().AddInstance(req, timeout=10)


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_enum_table_is_myshoes_names() -> None:
    assert [ENUM_TO_NAME[v] for v in range(1, 10)] == MYSHOES_NAMES
    assert [RT.Name(v) for v in range(10)] == [
        "Unknown", "Nano", "Micro", "Small", "Medium", "Large", "XLarge", "XLarge2", "XLarge3", "XLarge4"]
    assert resource_type_name(RT.Unknown, None) == ""
    assert resource_type_name(RT.Unknown, "medium") == "medium"
    assert resource_type_enum("xlarge2") == RT.XLarge2  # upstream shoes-vz's spelling
    assert resource_type_enum("2XLarge") == RT.XLarge2
    assert resource_type_enum("") == RT.Unknown
    assert resource_type_enum("huge") == RT.Unknown


@pytest.mark.parametrize("value", range(1, 10))
def test_resource_type_enum_goes_out_as_myshoes_name(plugin: PluginProcess, fake_shoes_server, value: int) -> None:
    resp = _add(plugin, resource_type=value)
    sent = fake_shoes_server.service.seen[-1].request
    assert sent.resource_type == MYSHOES_NAMES[value - 1]
    assert resp.resource_type == value


def test_unknown_uses_the_servers_default(plugin: PluginProcess, fake_shoes_server) -> None:
    resp = _add(plugin, resource_type=RT.Unknown)
    assert fake_shoes_server.service.seen[-1].request.resource_type == ""
    assert resp.resource_type == RT.Small  # the stand-in's default, reported back by the server


def test_unknown_uses_the_plugins_configured_default(plugin_path: Path, plugin_env, fake_shoes_server) -> None:
    env = plugin_env(fake_shoes_server.addr, fake_shoes_server.token, SHOESVZ_DEFAULT_RESOURCE_TYPE="medium")
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        resp = _add(p, resource_type=RT.Unknown)
    assert fake_shoes_server.service.seen[-1].request.resource_type == "medium"
    assert resp.resource_type == RT.Medium


def test_server_without_resource_type_answer(plugin: PluginProcess, fake_shoes_server) -> None:
    fake_shoes_server.service.resource_type_answer = ""  # e.g. upstream shoes-vz's server
    assert _add(plugin, resource_type=RT.Large).resource_type == RT.Large
    assert _add(plugin, runner_name="myshoes-job-2", resource_type=RT.Unknown).resource_type == RT.Unknown


def test_request_fields_labels_and_token_are_forwarded(plugin: PluginProcess, fake_shoes_server) -> None:
    resp = _add(plugin, setup_script="#!/bin/bash\necho hi\n", resource_type=RT.Nano, labels=["self-hosted", "macos"])
    seen = fake_shoes_server.service.seen[-1]
    assert seen.request == shoes_pb2.AddInstanceRequest(
        runner_name="myshoes-job-1", setup_script="#!/bin/bash\necho hi\n", resource_type="nano",
        labels=["self-hosted", "macos"])
    assert seen.metadata["authorization"] == f"Bearer {fake_shoes_server.token}"
    assert resp.cloud_id.startswith("shoes-vz-") and resp.shoes_type == "shoes-vz"
    assert resp.ip_address == "127.100.0.2"
    plugin.shoes().DeleteInstance(
        myshoes_pb2.DeleteInstanceRequest(cloud_id=resp.cloud_id, labels=["self-hosted"]), timeout=10)
    assert fake_shoes_server.service.seen[-1].request == shoes_pb2.DeleteInstanceRequest(
        cloud_id=resp.cloud_id, labels=["self-hosted"])


def test_invalid_argument_passes_through_from_the_server(plugin: PluginProcess) -> None:
    assert _code(lambda: _add(plugin, runner_name="bad name!")) == grpc.StatusCode.INVALID_ARGUMENT


def test_resource_type_number_unknown_to_the_plugin_is_invalid(plugin: PluginProcess, fake_shoes_server) -> None:
    assert _code(lambda: _add(plugin, resource_type=42)) == grpc.StatusCode.INVALID_ARGUMENT
    assert fake_shoes_server.service.seen == []


def test_delete_not_found_passes_through(plugin: PluginProcess) -> None:
    delete = plugin.shoes().DeleteInstance
    resp = _add(plugin)
    delete(myshoes_pb2.DeleteInstanceRequest(cloud_id=resp.cloud_id), timeout=10)
    again = _code(lambda: delete(myshoes_pb2.DeleteInstanceRequest(cloud_id=resp.cloud_id), timeout=10))
    assert again == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.FAILED_PRECONDITION])
def test_other_server_codes_keep_their_code(plugin: PluginProcess, fake_shoes_server, code) -> None:  # type: ignore[no-untyped-def]
    fake_shoes_server.service.fail_with = (code, "nope")
    assert _code(lambda: _add(plugin)) == code


def test_wrong_token_is_unauthenticated_not_invalid(plugin_path: Path, plugin_env, fake_shoes_server) -> None:
    env = plugin_env(fake_shoes_server.addr, "wrong-token")
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        assert _code(lambda: _add(p)) == grpc.StatusCode.UNAUTHENTICATED


def test_unreachable_server_is_unavailable(plugin_path: Path, plugin_env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        with PluginProcess.launch(plugin_path, plugin_env(f"127.0.0.1:{port}"), stderr=subprocess.DEVNULL) as p:
            with pytest.raises(grpc.RpcError) as err:
                _add(p)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in (err.value.details() or "")


def test_callers_deadline_passes_through(plugin: PluginProcess, fake_shoes_server) -> None:
    plugin.shoes().AddInstance(myshoes_pb2.AddInstanceRequest(runner_name="myshoes-d"), timeout=7)
    remaining = fake_shoes_server.service.seen[-1].time_remaining
    assert remaining is not None and 5 < remaining < 7.5  # grpc-timeout is rounded up on the wire


def test_no_deadline_means_none_upstream(plugin: PluginProcess, fake_shoes_server) -> None:
    # myshoes' strict-mode cleanup DeleteInstance has no deadline: none is invented on the way
    with pytest.raises(grpc.RpcError):
        plugin.shoes().DeleteInstance(myshoes_pb2.DeleteInstanceRequest(cloud_id="shoes-vz-x"))
    remaining = fake_shoes_server.service.seen[-1].time_remaining
    assert remaining is None or remaining > 1e9  # grpc reports "no deadline" as a huge number


def test_deadline_exceeded_upstream(plugin: PluginProcess, fake_shoes_server) -> None:
    fake_shoes_server.service.delay = 5
    with pytest.raises(grpc.RpcError) as err:
        plugin.shoes().AddInstance(myshoes_pb2.AddInstanceRequest(runner_name="myshoes-slow"), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
