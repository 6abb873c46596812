"""The gRPC fuzzer's smallest size inside `make test` (`make fuzz` runs 10,000 inputs): seeded, and
watching the server's writes (a write outside its directory is caught)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_grpc  # noqa: E402


async def test_a_small_seeded_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    report = await fuzz_grpc.fuzz(count=300, seed=11, time_limit=240, root=tmp_path)
    report.print()
    assert report.failures == []
    assert report.done == 300
    assert {"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"} <= set(report.codes)
    methods = {m.rsplit("/", 1)[1] for m, _ in report.by_method}
    assert methods == {"AddInstance", "DeleteInstance", "Enroll", "RegisterAgent", "Sync", "ListAgents",
                       "ListRunners", "DrainAgent", "UndrainAgent", "DeleteRunner"}


def test_the_same_seed_makes_the_same_inputs() -> None:
    import random

    def draw(seed: int) -> list[bytes]:
        gen = fuzz_grpc.Inputs(random.Random(seed))
        frames = [gen.frame(t.request) for t in fuzz_grpc.targets() for _ in range(20)]
        assert max(len(f) for f in frames) < 3 * fuzz_grpc.MAX_MESSAGE  # bounded: a run's memory stays small
        return frames

    assert draw(5) == draw(5) and draw(5) != draw(6)


async def test_the_write_watch_reports_a_write_outside(tmp_path: Path) -> None:
    """The server's process runs fuzz_site's audit hook: a file it writes beside its directory is caught."""
    import json
    import os

    report = tmp_path / "writes.log"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside.txt"
    code = (f"open({str(allowed / 'ok.txt')!r}, 'w').close(); open({str(outside)!r}, 'w').close(); "
            f"open({str(outside)!r}).read()")
    env = {**os.environ, "PYTHONPATH": str(HERE / "fuzz_site"),
           "SHOESVZ_FUZZ_WRITES": json.dumps({"allowed": [str(allowed)], "report": str(report)})}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env)
    assert await proc.wait() == 0
    lines = report.read_text().splitlines()
    assert len(lines) == 1 and str(outside) in lines[0] and "ok.txt" not in lines[0]
