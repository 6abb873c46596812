"""One configuration for every command: `template …`, `status`, `vm run` read the agent's settings
(-c/--config, SHOESVZ_CONFIG, SHOESVZ_AGENT_*, then flags), and `template freeze` never replaces a
template a live VM uses, whatever it is told."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from stack_fixtures import CLI, cli_env, eventually, make_stack

from shoes_vz.template import init_sim
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=cli_env(**(env or {})))


def agent_toml(path: Path, **values: object) -> Path:
    lines = ["[agent]"] + [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_template_list_reads_the_agents_configuration(tmp_path: Path) -> None:
    """`template list` used to look in the default /opt/myshoes/vz/templates whatever the agent used."""
    for d, name in (("conf", "from-config"), ("env", "from-env"), ("flag", "from-flag")):
        init_sim(tmp_path / d, name, disk_bytes=1 << 20)
    cfg = agent_toml(tmp_path / "agent.toml", templates_dir=tmp_path / "conf")
    assert "from-config" in run("template", "list", "-c", str(cfg)).stdout
    assert "from-config" in run("template", "list", env={"SHOESVZ_CONFIG": str(cfg)}).stdout
    # the same precedence as the agent: flags over the environment over the file
    env = {"SHOESVZ_CONFIG": str(cfg), "SHOESVZ_AGENT_TEMPLATES_DIR": str(tmp_path / "env")}
    out = run("template", "list", env=env).stdout
    assert "from-env" in out and "from-config" not in out
    out = run("template", "list", "--templates-dir", str(tmp_path / "flag"), env=env).stdout
    assert "from-flag" in out and "from-env" not in out


def test_status_reads_the_configured_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"agent_id": "agent-conf", "driver": "sim", "max_runners": 2, "runners": []}))
    cfg = agent_toml(tmp_path / "agent.toml", runner_state_file=state)
    r = run("status", "-c", str(cfg))
    assert r.returncode == 0 and "agent-conf" in r.stdout, r.stderr


def test_vm_run_reads_the_agents_configuration(tmp_path: Path) -> None:
    cfg = agent_toml(tmp_path / "agent.toml", driver="qemu")
    r = run("vm", "run", str(tmp_path / "x.bundle"), "-c", str(cfg))
    assert r.returncode == 1 and "agent.driver" in r.stderr and "Traceback" not in r.stderr


async def test_freeze_never_replaces_a_template_a_live_runner_uses(tmp_path: Path) -> None:
    """`template freeze` without --runners-dir looked for live runners in the default directory, not
    the configured one, and replaced the template a live runner had been cloned from."""
    async with make_stack(tmp_path) as stack:
        s = stack.agent.settings
        cfg = agent_toml(tmp_path / "agent.toml", templates_dir=s.templates_dir, runners_dir=s.runners_dir,
                         state_dir=tmp_path / "cli-state", allow_copy=s.allow_copy)
        async with stack.channel() as ch:
            await stack.add(sgrpc.ShoesServiceStub(ch), "live-one")
        (runner,) = stack.agent.runners.values()
        r = await asyncio.to_thread(run, "template", "edit", "sim-test", "-c", str(cfg))
        assert r.returncode == 0, r.stderr
        assert f"in use by 1 live runner(s) ({runner.runner_id})" in r.stderr  # edit says what freeze will wait for
        v1 = (s.templates_dir / "sim-test" / "TemplateMetadata.json").read_text()

        r = await asyncio.to_thread(run, "template", "freeze", "sim-test", "-c", str(cfg))
        assert r.returncode == 1 and f"in use by 1 live VM(s) in {s.runners_dir}: {runner.runner_id}" in r.stderr
        # told to look elsewhere, freeze still finds the VM: it holds the template's use lock
        r = await asyncio.to_thread(run, "template", "freeze", "sim-test", "-c", str(cfg),
                                    "--runners-dir", str(tmp_path / "elsewhere"))
        assert r.returncode == 1 and "in use by a live VM that is not in" in r.stderr, r.stderr
        assert (s.templates_dir / "sim-test" / "TemplateMetadata.json").read_text() == v1
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1

        stack.agent.handle_delete("del-1", runner.runner_id)
        await eventually(lambda: not stack.agent.runners)
        r = await asyncio.to_thread(run, "template", "freeze", "sim-test", "-c", str(cfg))
        assert r.returncode == 0 and "v2 frozen" in r.stdout, r.stderr


def test_a_vm_being_made_holds_the_template(tmp_path: Path) -> None:
    """Whatever flags freeze gets: a template whose use lock a VM process holds is not replaced."""
    from shoes_vz.core.errors import TemplateError
    from shoes_vz.template import TemplateStore, edit, freeze
    from shoes_vz.template.use_lock import UseLock

    init_sim(tmp_path / "t", "sim", disk_bytes=1 << 20)
    store = TemplateStore(tmp_path / "t")
    edit(store, "sim", copy=True)
    use = UseLock.take(store.path("sim"))
    # as supervisor.spawn does: the process inherits the lock, then only it holds it
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                              pass_fds=(use.fd,))
    use.close()
    try:
        with pytest.raises(TemplateError, match="in use by a live VM that is not in"):
            freeze(store, "sim", runners_dir=tmp_path / "no-runners-here")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    assert freeze(store, "sim", runners_dir=tmp_path / "no-runners-here").meta.version == "2"
