"""Timeouts in messages are the ones that fired; an empty setup_script does not stall.

`plugin call add` without `--setup-script` used to wait 30 s (an empty script never sent its EOF, so
the guest's `cat` waited) and then blamed `create_timeout 300s, boot_to_ip 180s, ip_to_ssh 60s`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from stack_fixtures import CLI, cli_env, make_stack

from shoes_vz.plugin.install import install_plugin
from shoes_vz.stack import LocalStack
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


async def test_plugin_call_add_without_a_setup_script(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start()
    try:
        plugin = await asyncio.to_thread(install_plugin, tmp_path / "shoes-vz-plugin")
        env = cli_env(SHOESVZ_SERVER_ADDR=stack.server_addr, SHOESVZ_TOKEN=stack.token)
        # a deadline below the old stall: the call fails (DEADLINE_EXCEEDED) if the stall is back
        proc = await asyncio.create_subprocess_exec(
            *CLI, "plugin", "call", "add", "--plugin", str(plugin), "--runner-name", "no-script",
            "--resource-type", "small", "--timeout", "25", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await stack.stop()
    assert proc.returncode == 0, out.decode() + err.decode()
    answer = json.loads(out)
    assert answer["code"] == "OK" and answer["response"]["ip_address"]
    assert "Traceback" not in err.decode()


async def test_the_deadline_named_is_the_one_that_fired(tmp_path: Path) -> None:
    async with make_stack(tmp_path, sim_boot_delay=5.0, boot_to_ip_timeout=0.5) as stack:
        async with stack.channel() as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stack.add(sgrpc.ShoesServiceStub(ch), "slow-boot")
    message = info.value.details() or ""
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no IP address within boot_to_ip_timeout (0.5s)" in message, message
    assert "create_timeout" not in message and "ip_to_ssh" not in message
