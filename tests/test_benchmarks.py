"""`make bench` keeps working: each benchmark runs once at its smallest size and exits 0.

Only that it runs and reports is asserted here; its figures belong to `make bench` itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stack_fixtures import have_sshd, require

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SMALLEST = {
    "bench_fastpath.py": ["--runners", "1", "--boot-delay", "0", "--baseline-runs", "1", "--clone-reps", "1",
                          "--copy-reps", "1"],
    "bench_plugin.py": ["--runs", "1"],
    "bench_sim.py": ["--runners", "1"],
    "bench_warm.py": ["--runners", "1", "--boot-delay", "0.2", "--restore-delay", "0"],
    "bench_setup.py": ["--runs", "1"],
    "soak.py": ["--count", "30"],  # its leak tolerances checked (exit 1 on a leak), on ten samples
}


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs(script: str, tmp_path: Path) -> None:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    # TMPDIR in the session's temp: the session-end check sees what a benchmark's sim network leaves
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH / script), *SMALLEST[script]], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "P50" in done.stdout or "median" in done.stdout, done.stdout[-2000:]
