"""`shoes-vz up` and the agent check what they need before they start anything, and name the fix in
one line: on a machine without OpenSSH's sshd, `make run` used to fail three runners with
`UNAVAILABLE … VM process exited while booting` and never show the driver's hint."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stack_fixtures import CLI, cli_env, one_error_line, require


def without_sshd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI where this host's sshd is not there: a private mount namespace with /dev/null (not
    executable) over it."""
    require(os.geteuid() == 0 and shutil.which("unshare") is not None, "root and unshare(1) (util-linux)")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    require(os.path.exists(sshd), "OpenSSH sshd to hide (apt-get install openssh-server)")
    script = f'mount --bind /dev/null {sshd} && exec "$@"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *CLI, *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_up_without_sshd_stops_before_starting_anything(tmp_path: Path) -> None:
    r = without_sshd("up", "--runners", "1", env=cli_env(TMPDIR=str(tmp_path)))
    line = one_error_line(r.stderr)
    assert r.returncode == 1
    assert "`shoes-vz up` cannot run here" in line and "apt-get install openssh-server" in line
    assert list(tmp_path.iterdir()) == []  # no state directory, no process: nothing was started


def test_an_agent_without_sshd_refuses_to_start(tmp_path: Path) -> None:
    from shoes_vz.template import init_sim

    init_sim(tmp_path / "templates", "sim-test", disk_bytes=1 << 20)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nserver_addr = "127.0.0.1:1"\ndriver = "sim"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'templates_dir = "{tmp_path / "templates"}"\nrunners_dir = "{tmp_path / "runners"}"\n'
                   'notify_listen = "127.0.0.1:0"\nmetrics_listen = ""\nallow_copy = true\n')
    r = without_sshd("agent", "-c", str(cfg), env=cli_env())
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and "the sim driver cannot run here" in line and "openssh-server" in line


def test_up_with_an_unusable_tmpdir(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "up", "--runners", "1"], capture_output=True, text=True, timeout=120,
                       env=cli_env(TMPDIR=str(tmp_path / "missing")))
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and f"TMPDIR={tmp_path / 'missing'} is not a writable directory" in line
