"""The namespaced sim through the whole stack (server, agent, `vm run`): what a Mac host's NAT
network does to runners — a spent DHCP pool, and myshoes' own setup script in a guest."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from myshoes_script import guest_tree, setup_script
from simvm import dhcp_log_count, runner_run
from stack_fixtures import eventually, make_stack, require_namespaced

from shoes_vz.core.states import GuestState, Phase
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


async def test_a_pool_spent_by_fresh_macs_gives_the_next_vm_no_address(tmp_path: Path) -> None:
    require_namespaced()
    async with make_stack(tmp_path, max_runners=3, host_vm_limit=3, driver_options={"pool_size": 2},
                          boot_to_ip_timeout=4.0) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            first, second = await stack.add(stub, "pool-1"), await stack.add(stub, "pool-2")
            assert first.ip_address != second.ip_address
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stack.add(stub, "pool-3")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # myshoes retries it later
        details = e.value.details() or ""
        assert "no DHCP lease for" in details and "2 unexpired lease(s) held by other clients" in details, details
        assert "the NAT pool may be spent" in details
        assert dhcp_log_count(stack.agent.settings.lease_file, "no address available") >= 1
        live = [r for r in stack.agent.runners.values() if r.phase == Phase.RUNNING]
        assert {r.ip for r in live} == {first.ip_address, second.ip_address}


async def test_myshoes_wrapper_brings_the_guest_runner_to_idle(tmp_path: Path) -> None:
    """myshoes' wrapper and main script (tests/myshoes_script.py) run as sent, RUNNER_BASE_DIRECTORY
    /tmp. GitHub is out of reach here, so the template's guest tree carries a `curl` double on the
    guest's PATH that serves the runner tarball — itself a double of config.sh, run.sh and
    Runner.Listener — from a local file; everything else the script uses is the guest's own."""
    require_namespaced()
    tree = guest_tree(tmp_path / "guest-tree")
    async with make_stack(tmp_path, template_kw={"guest_root": tree}) as stack:
        user = stack.template.meta.ssh_user
        script = setup_script("myshoes-job-1", user)
        async with stack.channel() as ch:
            reply = await stack.add(sgrpc.ShoesServiceStub(ch), "myshoes-job-1", script)
        runner = stack.agent.runners[reply.cloud_id.removeprefix("shoes-vz-")]
        await eventually(lambda: runner.guest_state == GuestState.IDLE, timeout=45)
        out = await _guest(stack, reply.ip_address, "cat /tmp/runner/.runner; echo; cat /tmp/runner/.labels; "
                                                    "ls /tmp; ps -A -o args=")
        info = json.loads(out.split("\n", 1)[0].lstrip("\ufeff"))
        assert info["agentName"] == "myshoes-job-1"
        assert info["gitHubUrl"] == "https://github.com/octo-org/octo-repo"
        assert "myshoes,dependabot" in out and "main.sh" in out and "actions-runner-linux-x64" in out
        assert "/tmp/runner/bin/Runner.Listener" in out and "./bin/runsvc.sh" in out
        # the guest's /tmp is its own: nothing of this reached the host's
        host_runner = Path("/tmp/runner/.runner")
        assert not host_runner.exists() or "myshoes-job-1" not in host_runner.read_text(errors="replace")


async def _guest(stack, ip: str, command: str) -> str:  # type: ignore[no-untyped-def]
    runner = next(r for r in stack.agent.runners.values() if r.ip == ip)
    return (await runner_run(stack.agent, runner, command))[1]


async def test_a_notify_server_guests_cannot_reach_fails_the_runner_with_the_fix(tmp_path: Path) -> None:
    """A namespaced guest reaches the host at its bridge's gateway, never at 127.0.0.1: an agent whose
    notify server listens on loopback gets runners that fail at once, saying so (the VM process's
    own error reaches the runner's error, and so myshoes' AddInstance answer)."""
    require_namespaced()
    async with make_stack(tmp_path, notify_listen="127.0.0.1:0") as stack:
        async with stack.channel() as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stack.add(sgrpc.ShoesServiceStub(ch), "unreachable-notify")
    details = e.value.details() or ""
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "VM process exited while booting: start failed" in details
    assert "on loopback, which a namespaced sim guest cannot reach" in details and "0.0.0.0:PORT" in details
