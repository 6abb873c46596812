"""A failed runner leaves its evidence: the VM log, the driver's last words and the agent's record
outlive the bundle (with a retention limit), and every message that names a log names a file that
exists. Real server and agent processes (LocalStack), real `vm run` processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from stack_fixtures import CLI, cli_env, have_sshd, one_error_line, require

from shoes_vz.stack import LocalStack
from shoes_vz.vm.bundle import Bundle
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

BROKEN_SSHD = "#!/bin/sh\necho 'sshd: this host keeps no host keys (a broken sshd)' >&2\nexit 255\n"


def _log_path(message: str) -> Path:
    found = re.findall(r"(/\S+/vm\.log)", message)
    assert found, f"no log named in {message!r}"
    return Path(found[-1])


async def test_a_driver_failure_reaches_addinstance_and_its_log_outlives_the_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sshd found on this host cannot start: the driver gives up. What AddInstance says used to be
    `VM process exited while booting: start failed (log: …/vm.log)`, naming a file already deleted,
    without the driver's own words."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sshd").write_text(BROKEN_SSHD)
    (fake / "sshd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")  # the agent and its VM processes find this one
    # loopback guests run the sshd on the agent's PATH; a namespaced guest sees only the host's /usr
    stack = LocalStack(tmp_path / "stack", driver_options={"mode": "loopback"})
    await stack.start()
    try:
        async with grpc.aio.insecure_channel(stack.server_addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await sgrpc.ShoesServiceStub(ch).AddInstance(
                    spb.AddInstanceRequest(runner_name="no-sshd", setup_script="true\n", resource_type="small"),
                    metadata=(("authorization", f"Bearer {stack.token}"),), timeout=90)
        message = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable: myshoes tries again
        assert re.search(r"VM process exited while booting: start failed: .*sshd did not start", message), message
        log = _log_path(message)
        assert log.is_file(), f"{message} names {log}, which does not exist"
        assert "this host keeps no host keys" in log.read_text()  # what the guest's sshd said
        assert "/runners/" not in message  # never the bundle's copy: teardown removes it
    finally:
        await stack.stop()
    kept = log.parent
    assert not Bundle.all_in(stack.runners_dir)  # the bundle is gone …
    meta = json.loads((kept / "RuntimeMetadata.json").read_text())  # … its evidence is not
    assert "sshd did not start" in meta["exit_reason"]
    record = json.loads((kept / "runner.json").read_text())
    assert record["runner_name"] == "no-sshd" and record["error"] and record["error"] in message


def test_up_keep_keeps_every_runners_evidence(tmp_path: Path) -> None:
    """`shoes-vz up --keep` used to keep the directory but not the runners' logs (bundles are deleted)."""
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    env = cli_env(TMPDIR=str(tmp_path))
    r = subprocess.run([*CLI, "up", "--runners", "1", "--keep"], capture_output=True, text=True, timeout=180,
                       env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(re.findall(r"state in (\S+)", r.stdout)[0].rstrip(","))
    assert (root / "server.log").is_file() and (root / "agent.log").is_file()
    (kept,) = (root / "agent" / "evidence").iterdir()
    assert {p.name for p in kept.iterdir()} >= {"vm.log", "RuntimeMetadata.json", "runner.json"}
    assert json.loads((kept / "runner.json").read_text())["runner_name"] == "demo-runner-1"


def test_up_names_an_existing_log_when_the_stack_cannot_start(tmp_path: Path) -> None:
    """A server that exits at start: the message names its log, and the log is still there."""
    env = cli_env(TMPDIR=str(tmp_path), SHOESVZ_SERVER_SYNC_INTERVAL="0")  # invalid: the server refuses to start
    r = subprocess.run([*CLI, "up", "--runners", "1"], capture_output=True, text=True, timeout=120, env=env)
    line = one_error_line(r.stderr)
    assert r.returncode == 1
    assert "the server exited with status 1" in line and "server.sync_interval" in line
    log = Path(re.findall(r"\(log: (\S+)\)", line)[0])
    assert log.is_file() and "sync_interval" in log.read_text()


def test_retention_by_count_and_age(tmp_path: Path) -> None:
    from shoes_vz.agent.evidence import Evidence

    ev = Evidence(tmp_path / "evidence", keep=3, max_age=3600)
    now = time.time()
    for i in range(5):
        b = Bundle.for_runner(tmp_path / "runners", f"r{i}")
        b.path.mkdir(parents=True)
        b.log_file.write_text(f"log {i}\n")
        b.update_metadata(runner_id=f"r{i}")
        assert ev.keep_runner(b, {"runner_id": f"r{i}", "error": "boom"}) is not None
        os.utime(ev.root / f"r{i}", (now - 100 + i, now - 100 + i))  # r4 is the newest
    assert sorted(p.name for p in ev.root.iterdir()) == ["r2", "r3", "r4"]  # by count: the newest three
    os.utime(ev.root / "r2", (now - 7200, now - 7200))
    assert [p.name for p in ev.prune(now)] == ["r2"]  # by age
    assert (ev.root / "r4" / "vm.log").read_text() == "log 4\n"
    assert Evidence(tmp_path / "none", keep=0, max_age=1).take_log(b) is None  # 0 keeps nothing
