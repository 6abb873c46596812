"""The plugin against the real server + sim agent (`sim_stack`), driven as myshoes drives it.

- with the real hashicorp go-plugin host: `interop/goplugin-host`, built from Debian's Go packages
  (GOPATH mode, no network). Where Go is missing the test skips, except under CI, where it fails.
- with the Python host (shoes_vz.plugin.host), for developers without Go.

`sim_stack` runs the server and agent on this test's event loop, so every blocking step (the host
program, a plugin launch, a sync gRPC call) runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from sniff_cases import CASES
from stack_fixtures import require

from shoes_vz.plugin.host import PluginProcess, host_env
from shoes_vz.plugin.sniff import sniff_file
from shoes_vz.wire import myshoes_pb2

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "interop" / "build.sh"
KILL_LIMIT_S = 1.0  # "well under go-plugin's 2 s wait"
NAMES = {"Nano", "Micro", "Small", "Medium", "Large", "XLarge", "XLarge2", "XLarge3", "XLarge4"}


@pytest.fixture(scope="session")
def goplugin_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [t for t in ("go", "protoc", "protoc-gen-go") if shutil.which(t) is None]
    require(not missing, f"{', '.join(missing)} (scripts/setup test installs Debian's Go packages)")
    out = tmp_path_factory.mktemp("goplugin-host")
    done = subprocess.run(["sh", str(BUILD_SH), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out / "goplugin-host"


def _server_env(sim_stack: object) -> dict[str, str]:
    env = dict(os.environ)
    env["SHOESVZ_SERVER_ADDR"] = sim_stack.server_addr  # type: ignore[attr-defined]
    token = getattr(sim_stack, "token", None)
    if token:
        env["SHOESVZ_TOKEN"] = token
    return env


def test_go_sniff_agrees_with_ours(goplugin_host: Path, plugin_path: Path, tmp_path: Path) -> None:
    files = [plugin_path]
    for name, data, _ in CASES:
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    done = subprocess.run([str(goplugin_host), "sniff", *map(str, files)], capture_output=True, text=True,
                          timeout=30, check=True)
    go = {Path(r["file"]): r["content_type"] for r in map(json.loads, done.stdout.splitlines())}
    assert go[plugin_path] == "application/octet-stream"
    for f in files:
        assert go[f] == sniff_file(f), f


async def test_go_plugin_host_add_delete_kill(goplugin_host: Path, plugin_path: Path, sim_stack: object) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(goplugin_host), "-max-kill", f"{int(KILL_LIMIT_S * 1000)}ms", "-log-level", "info",
         str(plugin_path)],
        env=_server_env(sim_stack), capture_output=True, text=True, timeout=600,
    )
    print(done.stdout)  # the interop record (pytest -s / on failure)
    steps = {r["step"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert steps["result"]["ok"], (steps["result"]["failures"], done.stderr[-4000:])
    assert done.returncode == 0
    add = steps["add"]
    assert add["code"] == "OK"
    assert add["cloud_id"].startswith("shoes-vz-") and add["shoes_type"] == "shoes-vz"
    assert add["ip_address"]
    assert add["resource_type"] in NAMES | {"Unknown"}
    assert steps["delete"]["code"] == "OK"
    assert steps["delete-again"]["code"] == "NotFound"
    for step in ("add", "delete", "delete-again"):
        assert steps[step]["kill_ms"] < KILL_LIMIT_S * 1000
    # the plugin's stderr reached the host and was re-logged at its level
    assert "[INFO]  myshoes.shoes-vz-plugin: [INFO]  shoes-vz-plugin: serving" in done.stderr


def _python_host_flow(plugin_path: Path, env: dict[str, str]) -> None:
    """AddInstance, AddInstance again (idempotent), DeleteInstance, DeleteInstance again: one process each."""
    add = myshoes_pb2.AddInstanceRequest(runner_name="myshoes-py-e2e", setup_script="#!/bin/bash\ntrue\n",
                                         labels=["self-hosted"])
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        added = p.shoes().AddInstance(add, timeout=300)
    assert p.graceful and (p.kill_s or 0) < KILL_LIMIT_S
    assert added.cloud_id.startswith("shoes-vz-") and added.shoes_type == "shoes-vz" and added.ip_address

    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        again = p.shoes().AddInstance(add, timeout=300)
    assert again.cloud_id == added.cloud_id  # myshoes retries a job with the same runner_name

    delete = myshoes_pb2.DeleteInstanceRequest(cloud_id=added.cloud_id, labels=["self-hosted"])
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        p.shoes().DeleteInstance(delete, timeout=180)
    with PluginProcess.launch(plugin_path, env, stderr=subprocess.DEVNULL) as p:
        with pytest.raises(grpc.RpcError) as err:
            p.shoes().DeleteInstance(delete, timeout=180)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_python_host_add_delete_kill(plugin_path: Path, sim_stack: object) -> None:
    await asyncio.to_thread(_python_host_flow, plugin_path, host_env(base=_server_env(sim_stack)))
