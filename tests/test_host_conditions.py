"""Problems found at start, not per request; a problem that shows later takes its host out of
placement (a host condition) with a code myshoes retries; rejected tokens are said clearly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path

import aiohttp
import grpc
import pytest
from stack_fixtures import CLI, TOKEN, agent_settings, cli_env, eventually, have_sshd, require, server_settings
from xfs import require_xfs, xfs_reflink_mount

from shoes_vz.agent.app import Agent
from shoes_vz.server.app import ServerApp
from shoes_vz.template import init_sim
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import agent_pb2_grpc as agrpc
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def test_an_agent_whose_runners_directory_cannot_clone_refuses_to_start(no_clone_dir: Path) -> None:
    """It used to start, register, and fail every AddInstance with `UNAVAILABLE … CloneError`."""
    init_sim(no_clone_dir / "templates", "sim-test", disk_bytes=1 << 20)
    cfg = no_clone_dir / "agent.toml"
    cfg.write_text(f'[agent]\nserver_addr = "127.0.0.1:1"\ndriver = "sim"\nstate_dir = "{no_clone_dir / "state"}"\n'
                   f'templates_dir = "{no_clone_dir / "templates"}"\nrunners_dir = "{no_clone_dir / "runners"}"\n'
                   f'runner_state_file = "{no_clone_dir / "state.json"}"\nnotify_listen = "127.0.0.1:0"\n'
                   'metrics_listen = ""\n')
    r = subprocess.run([*CLI, "agent", "-c", str(cfg)], capture_output=True, text=True, timeout=60, env=cli_env())
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the runners directory") and "cannot make runners from the templates" in line
    assert "(tmpfs)" in line and "mkfs.xfs -m reflink=1" in line  # the volume, its filesystem, the fix


def _fill(mount: Path) -> Path:
    """Take every free block of the volume (a disk gone full under a running agent)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        st = os.statvfs(mount)
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
        os.lseek(fd, 0, os.SEEK_END)
        for size in (1 << 20, 1 << 12, 1 << 9):  # down to the last block
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) > 0:
                    pass
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


async def _add(ch: grpc.aio.Channel, name: str) -> spb.AddInstanceResponse:
    return await sgrpc.ShoesServiceStub(ch).AddInstance(
        spb.AddInstanceRequest(runner_name=name, setup_script="true\n", resource_type="small"),
        metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=60)


async def test_a_full_disk_takes_the_host_out_of_placement_until_it_clears(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    require_xfs()
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    from shoes_vz.agent import app as agent_app

    monkeypatch.setattr(agent_app, "CONDITION_RECHECK_INTERVAL", 0.2)
    caplog.set_level(logging.INFO)
    with xfs_reflink_mount(size_gib=1) as mnt:
        for root in (mnt / "a", tmp_path / "b"):
            (root / "agent").mkdir(parents=True)
            await asyncio.to_thread(init_sim, root / "templates", "sim-test", disk_bytes=1 << 20)
        (mnt / "a" / "agent" / "agent-id").write_text("agent-a\n")  # placed first (same load: by id)
        (tmp_path / "b" / "agent" / "agent-id").write_text("agent-b\n")
        async with ServerApp(server_settings(tmp_path)) as server:
            a = Agent(agent_settings(mnt / "a", server.port, disk_reserve=0))  # no reserve: a clone meets ENOSPC
            b = Agent(agent_settings(tmp_path / "b", server.port, max_runners=1))
            async with a, b, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
                await eventually(lambda: {"agent-a", "agent-b"} <= set(server.hub.connections), timeout=20)
                filler = await asyncio.to_thread(_fill, mnt)
                with pytest.raises(grpc.aio.AioRpcError) as first:
                    await _add(ch, "job-1")
                assert first.value.code() == grpc.StatusCode.UNAVAILABLE  # retried by myshoes, never dropped
                assert "No space left" in (first.value.details() or "") or "no space left" in (
                    first.value.details() or "")
                # myshoes retries with the same name: the next placement is another host
                retry = await _add(ch, "job-1")
                assert retry.ip_address and (await server.store.call(server.store.live_runners))[0].agent_id \
                    == "agent-b"
                # with the other host full too, the answer is RESOURCE_EXHAUSTED and says why
                with pytest.raises(grpc.aio.AioRpcError) as none:
                    await _add(ch, "job-2")
                assert none.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "out of placement: agent-a (disk_full:" in (none.value.details() or "")
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
                        assert 'shoesvz_agents_out_of_placement{reason="disk_full"} 1.0' in await resp.text()
                filler.unlink()  # space again: the agent's re-check clears the condition by itself
                await eventually(lambda: any("condition disk_full cleared" in r.getMessage()
                                             for r in caplog.records), timeout=20)
                again = await _add(ch, "job-2")
                assert again.ip_address
    said = [r for r in caplog.records if r.name == "shoes_vz.server.agent_service" and "out of placement" in
            r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR  # a change is logged once, not per heartbeat


async def test_rejected_calls_are_logged_once_per_peer_per_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoes_vz.server.auth")
    async with ServerApp(server_settings(tmp_path)) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = agrpc.AgentServiceStub(ch)
            for token in ("wrong", "wrong", "", "wrong"):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.RegisterAgent(apb.RegisterAgentRequest(agent_id="x"), timeout=5,
                                             metadata=(("authorization", f"Bearer {token}"),) if token else ())
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    lines = [r.getMessage() for r in caplog.records if r.name == "shoes_vz.server.auth"]
    assert len(lines) == 1, lines
    assert "rejected a call from 127.0.0.1" in lines[0] and "RegisterAgent" in lines[0]
    assert "agent.enrollment_token" in lines[0] and "SHOESVZ_TOKEN" in lines[0]


def test_the_rejection_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    from shoes_vz.server.auth import RefusalLog

    now = [1000.0]
    rejections = RefusalLog(interval=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    for _ in range(5):
        rejections.rejected("ipv4:10.0.0.7:5000", "/m", "a wrong bearer token")
    rejections.rejected("ipv6:[::1]:6000", "/m", "no bearer token")
    now[0] += 61
    rejections.rejected("ipv4:10.0.0.7:5001", "/m", "a wrong bearer token")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "from 10.0.0.7" in lines[0] and "from ::1" in lines[1]
    assert "(5 since the last report)" in lines[2]


async def test_an_agent_with_a_wrong_enrollment_token_says_which_setting_once(tmp_path: Path) -> None:
    """It used to retry forever at WARNING without naming the setting to fix."""
    await asyncio.to_thread(init_sim, tmp_path / "templates", "sim-test", disk_bytes=1 << 20)
    async with ServerApp(server_settings(tmp_path)) as server:
        s = agent_settings(tmp_path, server.port)
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'[agent]\nserver_addr = "127.0.0.1:{server.port}"\n'
                       'enrollment_token = "not-the-enrollment-token"\n'
                       f'driver = "sim"\nstate_dir = "{s.state_dir}"\ntemplates_dir = "{s.templates_dir}"\n'
                       f'runners_dir = "{s.runners_dir}"\nrunner_state_file = "{s.runner_state_file}"\n'
                       f'notify_listen = "127.0.0.1:0"\nmetrics_listen = ""\nallow_copy = true\n')
        proc = await asyncio.create_subprocess_exec(*CLI, "agent", "-c", str(cfg), "--verbose",
                                                    stderr=subprocess.PIPE, env=cli_env())
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        with contextlib.suppress(TimeoutError):  # until two retries were made after the first one said it
            while len([ln for ln in lines if " DEBUG " in ln and "rejects" in ln]) < 2:
                raw = await asyncio.wait_for(proc.stderr.readline(), deadline - time.monotonic())
                lines.append(raw.decode())
        proc.terminate()
        await proc.wait()
    errors = [ln for ln in lines if " ERROR " in ln]
    assert len(errors) == 1, lines  # said once; the retries behind it are debug lines
    assert "agent.enrollment_token" in errors[0] and "SHOESVZ_AGENT_ENROLLMENT_TOKEN" in errors[0]
    assert "retrying" in errors[0]
    assert not [ln for ln in lines if "WARNING" in ln and "UNAUTHENTICATED" in ln]
