"""The HTTP fuzzer's smallest size inside `make test` (`make fuzz-http` runs 10,000 inputs): seeded,
against a real notify server and runner-agent, watching both processes' writes."""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_http  # noqa: E402


def test_a_small_seeded_http_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    report = fuzz_http.fuzz(count=300, seed=7, time_limit=240, root=tmp_path)
    report.print()
    assert report.failures == []
    assert report.done == 300
    targets = {t for t, _ in report.by_target}
    assert targets == {"agent", "notify"}
    assert {"400", "404", "405"} <= set(report.codes)


def test_the_same_seed_makes_the_same_requests() -> None:
    def draw(seed: int) -> list[bytes]:
        return [fuzz_http.Inputs(random.Random(f"{seed}:{i}"), "t" * 43).request("agent" if i % 2 else "notify")
                for i in range(50)]

    assert draw(5) == draw(5) and draw(5) != draw(6)
