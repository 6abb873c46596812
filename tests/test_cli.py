"""The `shoes-vz` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "shoes_vz.cli.main"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=check, timeout=60)


def test_help_lists_the_commands() -> None:
    out = run("--help").stdout
    for cmd in ("server", "agent", "vm", "runner-agent", "up", "status", "template"):
        assert cmd in out
    assert "run" in run("vm", "--help").stdout


def test_template_init_sim_and_list(tmp_path: Path) -> None:
    r = run("template", "init-sim", "ci-sim", "--templates-dir", str(tmp_path), "--resource-types", "small,large",
            "--disk-gib", "1")
    assert "ci-sim" in r.stdout
    assert "small, large" in run("template", "list", "--templates-dir", str(tmp_path)).stdout
    bad = run("template", "init-sim", "ci-sim", "--templates-dir", str(tmp_path), check=False)
    assert bad.returncode == 1 and "already exists" in bad.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nlisten = "nowhere"\n')
    r = run("server", "--config", str(cfg), check=False)
    assert r.returncode == 1
    assert "server.listen" in r.stderr and "HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr


def test_status_reads_the_state_file(tmp_path: Path) -> None:
    f = tmp_path / "runner-state.json"
    f.write_text(json.dumps({"agent_id": "agent-x", "driver": "sim", "max_runners": 2, "runners": [
        {"runner_id": "abc", "runner_name": "job-1", "state": "running", "guest_runner_state": "idle",
         "ip_address": "127.100.0.2", "timings": {"clone": 0.001, "boot_to_ssh": 0.2, "total": 0.3}, "error": ""},
        {"runner_id": "def", "runner_name": "job-2", "state": "running", "ip_address": "127.100.0.3",
         "warm_slot": "/t/.warm/x/1/slot-1", "restored": True, "timings": {}},
        {"runner_id": "ghi", "runner_name": "job-3", "state": "running", "ip_address": "127.100.0.4",
         "warm_slot": "/t/.warm/x/1/slot-2", "restored": False, "timings": {}}]}))
    out = run("status", "--state-file", str(f)).stdout
    assert "job-1" in out and "running" in out and "agent-x" in out
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if "job-" in line}
    assert " cold " in rows["job-1"] and " warm " in rows["job-2"] and " cold* " in rows["job-3"]
    missing = run("status", "--state-file", str(tmp_path / "none.json"), check=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_vm_run_refuses_a_missing_bundle(tmp_path: Path) -> None:
    r = run("vm", "run", str(tmp_path / "nope.bundle"), "--driver", "sim", check=False)
    assert r.returncode == 11  # VMExit.CONFIG_ERROR
