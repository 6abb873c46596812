"""Logs people can read and ship: a real server and agent (LocalStack, separate processes) in JSON
mode write nothing but JSON objects, one a line; every line about a runner names its id and name;
each process starts with one line saying what it is and which credentials it has, never their
values; third-party loggers say nothing below WARNING."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from metrics_fixtures import JOB_SCRIPT
from stack_fixtures import eventually, have_sshd, require

from shoes_vz.core import logs
from shoes_vz.stack import LocalStack
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{n} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{path.name}:{n}: {line!r}"
        for key in ("@level", "@message", "@module", "@timestamp"):
            assert key in entry, f"{path.name}:{n} lacks {key}: {line!r}"
        out.append(entry)
    return out


async def test_server_and_agent_write_json_lines_that_name_the_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    monkeypatch.setenv("SHOESVZ_SERVER_LOG_FORMAT", "json")
    monkeypatch.setenv("SHOESVZ_AGENT_LOG_FORMAT", "json")
    stack = LocalStack(tmp_path / "stack")
    await stack.start()
    try:
        async with grpc.aio.insecure_channel(stack.server_addr) as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            auth = (("authorization", f"Bearer {stack.token}"),)
            reply = await stub.AddInstance(spb.AddInstanceRequest(
                runner_name="logged-1", setup_script=JOB_SCRIPT.replace("__NAME__", "logged-1")),
                metadata=auth, timeout=60)
            runner_id = reply.cloud_id.removeprefix("shoes-vz-")
            await eventually(lambda: any(r.get("guest_runner_state") == "finished"
                                         for r in stack.runner_state().get("runners", [])), timeout=30)
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=auth, timeout=10)
            await eventually(lambda: not stack.runner_state().get("runners"), timeout=30)
    finally:
        await stack.stop()

    server = json_lines(stack.root / "server.log")
    agent = json_lines(stack.root / "agent.log")
    assert server and agent
    # the start lines
    (start,) = [e for e in server if str(e["@message"]).startswith("shoes-vz 0.1.0 server listening")]
    assert start["version"] == "0.1.0" and start["db_path"] == str(stack.db_path)
    assert start["credentials_set"] == "shoes_token,enrollment_token"
    assert start["credentials_unset"] == "operator_token,viewer_token"
    (astart,) = [e for e in agent if str(e["@message"]).startswith("shoes-vz 0.1.0 agent ")]
    assert astart["driver"] == "sim" and astart["runners_dir"] == str(stack.runners_dir)
    assert "enrollment_token" in str(astart["credentials_set"])
    everything = (stack.root / "server.log").read_text() + (stack.root / "agent.log").read_text()
    for secret in (stack.token, stack.enrollment_token):
        assert secret not in everything
    # every line that is about this runner carries its id and name
    about = [e for e in server + agent if runner_id in json.dumps(e)]
    assert len(about) >= 6, about  # AddInstance, the phases, the guest's job, the delete
    unnamed = [e for e in about if (e.get("runner_id"), e.get("runner_name")) != (runner_id, "logged-1")]
    assert not unnamed, "\n".join(json.dumps(e) for e in unnamed)
    phases = [str(e["@message"]) for e in agent if "→" in str(e["@message"])]
    assert any("running" in m for m in phases) and any("gone" in m for m in phases), phases
    # libraries talk only when something is wrong (asyncssh logs every connection at INFO)
    for e in server + agent:
        module = str(e["@module"])
        if module.split(".")[0] in {t.split(".")[0] for t in logs.THIRD_PARTY}:
            assert e["@level"] in ("warn", "error"), e


def test_a_log_format_that_does_not_exist_is_one_clear_error(tmp_path: Path) -> None:
    import subprocess

    from stack_fixtures import CLI, cli_env, one_error_line

    for command in ("server", "agent"):
        p = subprocess.run([*CLI, command, "--log-format", "yaml"], capture_output=True, text=True, timeout=60,
                           env=cli_env(), cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert "'yaml' is not one of 'text', 'json'" in p.stderr
    p = subprocess.run([*CLI, "server"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=cli_env(SHOESVZ_SERVER_LOG_FORMAT="yaml"))
    assert "log_format" in one_error_line(p.stderr) and p.returncode == 1


def test_text_lines_name_the_runner_and_libraries_keep_quiet() -> None:
    """In text mode a runner's line gets `[runner ID NAME]` unless it names the id itself; a
    library's INFO is dropped unless --debug; lines inside a task made in the runner's context
    carry it too."""
    import asyncio
    import io
    import logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in logs.THIRD_PARTY})
    try:
        logs.configure("text", stream=stream)
        ours, lib = logging.getLogger("shoes_vz.test"), logging.getLogger("asyncssh")

        async def in_task() -> None:
            ours.info("from a task")

        async def main() -> None:
            await asyncio.create_task(in_task(), context=logs.runner_task_context("r2", "job-2"))

        with logs.runner_context("r1", "job-1"):
            ours.info("cloning")
            ours.info("runner r1 (job-1): booting")
            lib.info("connection from a guest")
            lib.warning("auth failed")
        asyncio.run(main())
        ours.info("no runner")
        logs.configure("text", debug=True, stream=stream)
        lib.info("now shown")
    finally:  # this process's logging as pytest set it up
        root.handlers[:], level, levels = saved
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("INFO cloning [runner r1 job-1]")
    assert lines[1].endswith("INFO runner r1 (job-1): booting")  # it names the runner: nothing added
    assert lines[2].endswith("asyncssh WARNING auth failed [runner r1 job-1]")
    assert lines[3].endswith("INFO from a task [runner r2 job-2]")
    assert lines[4].endswith("INFO no runner")
    assert lines[5].endswith("asyncssh INFO now shown")
    assert len(lines) == 6
