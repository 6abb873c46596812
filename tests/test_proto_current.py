"""The committed generated code is what `make proto` produces from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        cwd=ROOT, check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    def differs(rel: Path) -> bool:
        ours = ROOT / "src" / rel
        return not ours.is_file() or ours.read_bytes() != (tmp_path / rel).read_bytes()

    stale = [str(rel) for rel in generated if differs(rel)]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


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
