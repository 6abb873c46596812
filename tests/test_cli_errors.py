"""One line per error, never a traceback: the mistakes a first-time operator makes, each run as the
real command (a subprocess), each answered by exactly one `error: …` line on stderr."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from stack_fixtures import CLI, cli_env, have_sshd, one_error_line, require

from shoes_vz.plugin.install import install_plugin


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=cli_env(**(env or {})))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_plugin_call_with_a_relative_plugin_path_launches_it(tmp_path: Path) -> None:
    """`--plugin ./shoes-vz-plugin` used to become a PATH lookup of `shoes-vz-plugin` (FileNotFoundError
    traceback); now the file in the current directory is launched and answers."""
    install_plugin(tmp_path / "shoes-vz-plugin")
    r = run("plugin", "call", "add", "--plugin", "./shoes-vz-plugin", "--runner-name", "rel-path",
            "--timeout", "5", cwd=tmp_path, env={"SHOESVZ_SERVER_ADDR": f"127.0.0.1:{closed_port()}"})
    assert "Traceback" not in r.stderr, r.stderr
    answer = json.loads(r.stdout)
    assert r.returncode == 1 and answer["code"] == "UNAVAILABLE"  # the plugin ran; no server is there


def test_plugin_call_with_a_missing_plugin_file(tmp_path: Path) -> None:
    r = run("plugin", "call", "add", "--plugin", "./nope", "--runner-name", "x", cwd=tmp_path,
            env={"SHOESVZ_SERVER_ADDR": "127.0.0.1:1"})
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and f"no plugin file at {tmp_path / 'nope'}" in line and "plugin install" in line


def test_plugin_call_without_the_server_address(tmp_path: Path) -> None:
    """The plugin's own clear line used to be followed by ~40 lines of traceback."""
    install_plugin(tmp_path / "shoes-vz-plugin")
    r = run("plugin", "call", "add", "--plugin", str(tmp_path / "shoes-vz-plugin"), "--runner-name", "x")
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and "SHOESVZ_SERVER_ADDR is not set" in line


def test_a_resource_type_refused_lists_the_valid_names(tmp_path: Path) -> None:
    r = run("plugin", "call", "add", "--plugin", "./p", "--runner-name", "x", "--resource-type", "huge")
    line = one_error_line(r.stderr)
    assert r.returncode == 2
    for name in ("Unknown", "Nano", "Small", "XLarge4", "small", "4xlarge"):
        assert name in line


def test_a_metrics_port_already_taken(tmp_path: Path) -> None:
    """A clear line used to be followed by a `Server.__del__` traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run("server", "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}",
                "--db", str(tmp_path / "s.db"))
    line = one_error_line(r.stderr)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in line and f"in use by pid {os.getpid()}" in line
    assert "--metrics-listen" in line


def test_bad_paths_and_environment_are_one_line(tmp_path: Path) -> None:
    r = run("template", "list", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "missing.toml does not exist" in one_error_line(r.stderr)
    r = run("status", env={"SHOESVZ_AGENT_MAX_RUNNERS": "lots"})
    assert r.returncode == 1 and "agent.max_runners" in one_error_line(r.stderr)
    r = run("status", "--state-file", str(tmp_path / "none.json"))
    assert r.returncode == 1 and "cannot read" in one_error_line(r.stderr)
    r = run("vm", "run", str(tmp_path / "x.bundle"), env={"SHOESVZ_AGENT_DRIVER": "qemu"})
    assert r.returncode == 1 and "agent.driver" in one_error_line(r.stderr)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    for args, env in ((("--debug", "template", "list", "-c", missing), {}),
                      (("template", "list", "-c", missing), {"SHOESVZ_DEBUG": "1"})):
        r = run(*args, env=env)
        assert r.returncode == 1 and "Traceback" in r.stderr and "ConfigError" in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_ctrl_c_during_up_cleans_up_and_says_so_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) used to end in
    19 frames of traceback, although the cleanup worked."""
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    env = cli_env(TMPDIR=str(tmp_path))
    proc = subprocess.Popen([*CLI, "up", "--runners", "6", "--boot-delay", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # interrupt while runners are being driven
            if "myshoes plugin installed" in line or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = one_error_line(r.stderr)
    assert proc.returncode == 130, stderr
    assert line.startswith("error: interrupted: SIGINT") and "nothing left behind" in line
    assert not list(tmp_path.glob("shoes-vz-up-*"))  # the state directory went too
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # no server, agent, VM or guest process of that run is alive
