"""`shoes-vz ssh RUNNER` and `shoes-vz logs RUNNER` on the agent host (issue 14 item 1), against a real sim
agent: OpenSSH with the runner's own key and its pinned host key only (a guest answering with another
host key is refused), the VM and setup_script logs of a live runner, and the evidence of one that is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from pathlib import Path

import asyncssh
from stack_fixtures import CLI, SimStack, cli_env, eventually, make_stack, one_error_line

from shoes_vz.agent.runner_access import find_runner, ssh_access
from shoes_vz.cli.runner_host import ssh_command
from shoes_vz.core import ids
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def agent_env(stack: SimStack) -> dict[str, str]:
    s = stack.agent.settings
    return cli_env(SHOESVZ_AGENT_STATE_DIR=str(s.state_dir), SHOESVZ_AGENT_TEMPLATES_DIR=str(s.templates_dir),
                   SHOESVZ_AGENT_RUNNERS_DIR=str(s.runners_dir),
                   SHOESVZ_AGENT_RUNNER_STATE_FILE=str(s.runner_state_file))


async def cli(stack: SimStack, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*CLI, *args], capture_output=True, text=True,
                                   env=agent_env(stack), timeout=60)


async def test_ssh_and_logs_of_a_live_runner_then_of_a_gone_one(tmp_path: Path) -> None:
    async with make_stack(tmp_path, evidence_for_every_runner=True) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            reply = await stack.add(stub, "job-ssh", "echo from-the-setup-script\n")
            runner_id = ids.runner_id_from_cloud_id(reply.cloud_id)
            await eventually(lambda: runner_id in stack.agent.settings.runner_state_file.read_text())

            shell = await cli(stack, "ssh", "job-ssh", "--", "echo", "inside-$((6*7))")
            assert shell.returncode == 0, shell.stderr
            assert shell.stdout.strip() == "inside-42"
            failing = await cli(stack, "ssh", runner_id, "--", "exit", "3")
            assert failing.returncode == 3  # the guest command's status is ssh's

            shown = await cli(stack, "logs", "job-ssh", "--agent-log", str(tmp_path / "no-such.log"))
            assert shown.returncode == 0, shown.stderr
            assert f"runner {runner_id} (job-ssh): running" in shown.stdout
            vm_section = shown.stdout.split("==> VM log: ")[1].split("==> setup_script log")[0]
            assert str(stack.agent.runners[runner_id].bundle.log_file) in vm_section and vm_section.count("\n") > 2
            setup = shown.stdout.split("==> setup_script log (in the guest) <==")[1]
            assert "from-the-setup-script" in setup

            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                      metadata=stack.metadata, timeout=30)
            await eventually(lambda: runner_id not in stack.agent.runners, timeout=30)
            await eventually(lambda: (stack.agent.settings.state_dir / "evidence" / runner_id / "runner.json").exists())

        gone = await cli(stack, "logs", "job-ssh")
        assert gone.returncode == 0, gone.stderr
        assert "gone (kept evidence)" in gone.stdout and "(the guest is gone)" in gone.stdout
        assert str(stack.agent.settings.state_dir / "evidence" / runner_id / "vm.log") in gone.stdout
        refused = await cli(stack, "ssh", runner_id)
        assert refused.returncode == 1 and "is gone" in one_error_line(refused.stderr)
        unknown = await cli(stack, "logs", "no-such-runner")
        assert unknown.returncode == 1 and "no runner 'no-such-runner' on this host" in one_error_line(unknown.stderr)


async def test_ssh_refuses_a_guest_with_another_host_key(tmp_path: Path) -> None:
    """The pin is the only key OpenSSH accepts: the same address answering with a key other than the
    runner's announced per-boot one (someone else's VM on that address) is refused before any login."""
    async with make_stack(tmp_path) as stack:
        async with stack.channel() as ch:
            reply = await stack.add(sgrpc.ShoesServiceStub(ch), "job-pin")
        runner_id = ids.runner_id_from_cloud_id(reply.cloud_id)
        s = stack.agent.settings
        await eventually(lambda: runner_id in s.runner_state_file.read_text())
        access = ssh_access(s, find_runner(s, runner_id))
        with ssh_command(access, "true") as argv:
            assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        forged = dataclasses.replace(access, host_key=other)
        with ssh_command(forged, "echo", "logged-in") as argv:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 255 and "logged-in" not in done.stdout
        assert "host key" in done.stderr.lower(), done.stderr
