"""What scripts/setup costs every `make run` and `make test` when everything is already in place.

Per purpose (`run`, `test`, `venv`): the median and P95 of N no-op runs of scripts/setup, against
the baseline of starting bash itself (`bash -c :`), measured in the same run. The first call is a
warm-up; when it had something to do (a package, the venv), what it printed is shown.

    python benchmarks/bench_setup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

from shoes_vz.core.timings import percentile

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup"


def run_ms(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    warm = subprocess.run([str(SETUP), "test"], capture_output=True, text=True)
    if warm.returncode != 0:
        raise SystemExit(f"scripts/setup test failed, nothing to measure:\n{warm.stderr}")
    if warm.stdout:
        print(f"(the warm-up run had work to do: {warm.stdout.strip()})")
    base = run_ms(["bash", "-c", ":"], args.runs)
    print(f"scripts/setup with nothing to do, {args.runs} runs      median      P95   ratio to bash")
    print(f"  baseline: bash -c :                  {statistics.median(base):8.1f} ms {percentile(base, 95):6.1f} ms")
    for purpose in ("run", "test", "venv"):
        ours = run_ms([str(SETUP), purpose], args.runs)
        ratio = statistics.median(ours) / statistics.median(base)
        print(f"  scripts/setup {purpose:<4}                   {statistics.median(ours):8.1f} ms "
              f"{percentile(ours, 95):6.1f} ms   {ratio:5.1f}×")


if __name__ == "__main__":
    main()
