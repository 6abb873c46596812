"""shoes-vz-plugin launch cost as myshoes pays it on every call (issue 3 benchmark).

Per run: spawn the installed plugin (the zipapp `shoes-vz plugin install` writes) with the go-plugin
environment → its handshake line on stdout; then Kill() as go-plugin does it (GRPCController.Shutdown,
close, wait ≤ 2 s for exit, else SIGKILL). Median of N runs, with Shutdown served and with it disabled
(SHOESVZ_PLUGIN_DISABLE_SHUTDOWN=1: the baseline of a plugin without GRPCController).
Targets: handshake ≤ 300 ms, Kill ≤ 100 ms.

    python benchmarks/bench_plugin.py [--runs 20] [--plugin PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from shoes_vz.plugin.host import PluginProcess, host_env
from shoes_vz.plugin.install import install_plugin

TARGET_HANDSHAKE_MS = 300.0
TARGET_KILL_MS = 100.0


def measure(plugin: Path, runs: int, *, disable_shutdown: bool) -> tuple[float, float]:
    env = host_env({"SHOESVZ_SERVER_ADDR": "127.0.0.1:1",  # never called: launch and teardown only
                    "SHOESVZ_PLUGIN_DISABLE_SHUTDOWN": "1" if disable_shutdown else "0"})
    handshakes, kills = [], []
    for _ in range(runs):
        p = PluginProcess.launch(plugin, env, stderr=subprocess.DEVNULL)
        handshakes.append(p.handshake_s * 1000)
        kills.append(p.kill() * 1000)
    return statistics.median(handshakes), statistics.median(kills)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--plugin", type=Path, help="an installed plugin (default: install one to a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plugin = args.plugin or install_plugin(Path(tmp) / "shoes-vz-plugin")
        measure(plugin, 2, disable_shutdown=False)  # warm the page cache and .pyc files
        hs, kill = measure(plugin, args.runs, disable_shutdown=False)
        base_hs, base_kill = measure(plugin, args.runs, disable_shutdown=True)
    print(f"plugin launch, median of {args.runs}          spawn→handshake   Kill()")
    print(f"  shoes-vz-plugin (Shutdown served)      {hs:8.1f} ms   {kill:8.1f} ms")
    print(f"  baseline (Shutdown disabled)           {base_hs:8.1f} ms   {base_kill:8.1f} ms")
    ok = hs <= TARGET_HANDSHAKE_MS and kill <= TARGET_KILL_MS
    print(f"  targets ≤ {TARGET_HANDSHAKE_MS:.0f} ms / ≤ {TARGET_KILL_MS:.0f} ms: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
