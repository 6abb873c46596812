"""The committed generated code is what `make proto` produces from the .proto files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_PY = ROOT / "scripts" / "proto.py"  # what `make proto` and `make proto-check` run


def proto(action: str, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROTO_PY), action, "--root", str(root)], capture_output=True,
                          text=True, timeout=120)


def test_generated_code_is_current() -> None:
    done = proto("check")
    assert done.returncode == 0, done.stderr


def copy_of_repo(tmp_path: Path) -> Path:
    """What proto.py reads and writes: pyproject.toml (the pin), proto/, the committed generated code."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "proto", root / "proto")
    shutil.copy(ROOT / "pyproject.toml", root)
    wire = root / "src" / "shoes_vz" / "wire"
    wire.mkdir(parents=True)
    for f in (ROOT / "src" / "shoes_vz" / "wire").glob("*_pb2*.py*"):
        shutil.copy(f, wire)
    assert proto("check", root).returncode == 0
    return root


def test_proto_check_names_every_stale_file(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    wire = root / "src" / "shoes_vz" / "wire"
    (wire / "agent_pb2.py").write_text((wire / "agent_pb2.py").read_text().replace("Sync", "Synk"))
    (wire / "shoes_pb2.pyi").unlink()
    (wire / "retired_pb2.py").write_text("# from a .proto that was removed\n")

    done = proto("check", root)
    assert done.returncode == 1
    assert "make proto" in done.stderr
    assert "src/shoes_vz/wire/agent_pb2.py: differs" in done.stderr
    assert "src/shoes_vz/wire/shoes_pb2.pyi: missing" in done.stderr
    assert "src/shoes_vz/wire/retired_pb2.py: no .proto makes it" in done.stderr
    assert "myshoes_pb2" not in done.stderr  # only the stale ones are named

    # `make proto` repairs exactly that
    assert proto("write", root).returncode == 0
    assert not (wire / "retired_pb2.py").exists()
    assert proto("check", root).returncode == 0


def test_proto_check_refuses_another_grpcio_tools(tmp_path: Path) -> None:
    root = copy_of_repo(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(re.sub(r"grpcio-tools==[^\"]+", "grpcio-tools==0.0.1", pyproject.read_text()))
    done = proto("check", root)
    assert done.returncode == 1
    assert "pyproject.toml pins 0.0.1" in done.stderr and "scripts/setup" in done.stderr


def test_wire_compatible_field_numbers() -> None:
    from shoes_vz.wire import agent_pb2, shoes_pb2

    def numbers(msg) -> dict[str, int]:
        return {f.name: f.number for f in msg.DESCRIPTOR.fields}

    assert shoes_pb2.DESCRIPTOR.package == "shoes.vz.shoes.v1"
    assert agent_pb2.DESCRIPTOR.package == "shoes.vz.agent.v1"
    assert numbers(shoes_pb2.AddInstanceRequest) == {"runner_name": 1, "setup_script": 2, "resource_type": 3,
                                                     "labels": 4}
    assert numbers(shoes_pb2.AddInstanceResponse) == {"cloud_id": 1, "shoes_type": 2, "ip_address": 3,
                                                      "resource_type": 4}
    assert numbers(agent_pb2.AgentCapacity) == {"max_runners": 1, "cpu_cores": 2, "memory_bytes": 3}
    r = numbers(agent_pb2.Runner)
    assert {k: r[k] for k in ("runner_id", "runner_name", "agent_id", "state", "ip_address", "created_at",
                              "error_message", "guest_runner_state")} == dict(
        runner_id=1, runner_name=2, agent_id=3, state=4, ip_address=5, created_at=6, error_message=7,
        guest_runner_state=8)
    c = numbers(agent_pb2.CreateRunnerCommand)
    assert {k: c[k] for k in ("runner_id", "runner_name", "setup_script", "request_id")} == dict(
        runner_id=1, runner_name=2, setup_script=3, request_id=4)
    assert numbers(agent_pb2.SyncResponse) == {"create_runner": 1, "delete_runner": 2, "noop": 3}
    s = numbers(agent_pb2.SyncRequest)
    assert {k: s[k] for k in ("agent_id", "active_runners", "runners")} == dict(agent_id=1, active_runners=2,
                                                                               runners=3)
    assert s["acks"] == 10 and s["templates"] == 11
    assert numbers(agent_pb2.Template) == {"name": 1, "version": 2, "resource_types": 3, "cpu_cores": 4,
                                           "memory_bytes": 5, "digest": 6, "warm_slots": 7, "free_warm_slots": 8}
    assert numbers(agent_pb2.TemplateReport) == {"templates": 1}
