#!/usr/bin/env python3
"""Warm-slot restore vs cold boot to SSH-ready — SIM ONLY (`make bench`).

    python benchmarks/bench_warm.py [--runners 10] [--boot-delay 1.0] [--restore-delay 0.1]

A real server + sim agent (`LocalStack`, separate processes). N sequential runners boot cold, then
`shoes-vz template warm … --slots 2` makes two saved slots and N more runners restore from them.
Each runner's boot_to_ssh (VM started/restore began → SSH ok) and total (command → setup started)
come from the agent's runner-state.json.

What this measures, honestly: the sim models a macOS cold boot as `--boot-delay` and a VZ restore as
`--restore-delay`; both are assumptions, so the cold/warm ratio mostly restates them. The figure that
is ours is the overhead of each path beyond its modelled delay (clone of the slot's files, State.save
checks, guest parts restarting, SSH probe) — printed as "overhead". A second pass with both delays
at 0 shows that overhead alone. Real figures need a Mac (docs/mac-acceptance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from shoes_vz.core.timings import percentile
from shoes_vz.stack import TEMPLATE, LocalStack
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


async def one_runner(stack: LocalStack, stub: sgrpc.ShoesServiceStub, name: str) -> dict[str, Any]:
    md = (("authorization", f"Bearer {stack.token}"),)
    reply = await stub.AddInstance(spb.AddInstanceRequest(runner_name=name, setup_script="true\n"),
                                   metadata=md, timeout=120)
    runner_id = reply.cloud_id.removeprefix("shoes-vz-")
    row: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = next((r for r in stack.runner_state().get("runners", []) if r["runner_id"] == runner_id), {})
        if row.get("timings", {}).get("total") is not None:
            break
        await asyncio.sleep(0.02)
    await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=md, timeout=30)
    while any(r["runner_id"] == runner_id for r in stack.runner_state().get("runners", [])):
        await asyncio.sleep(0.02)
    return row


async def series(stack: LocalStack, n: int, label: str, console: Console) -> list[dict[str, Any]]:
    rows = []
    async with grpc.aio.insecure_channel(stack.server_addr) as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        for i in range(n):
            row = await one_runner(stack, stub, f"{label}-{i + 1}")
            t = row.get("timings", {})
            console.print(f"  {label}-{i + 1}: boot_to_ssh {1000 * (t.get('boot_to_ssh') or 0):.1f} ms, "
                          f"restored={row.get('restored')}")
            rows.append(row)
    return rows


def warm_slots(stack: LocalStack, slots: int) -> None:
    subprocess.run([sys.executable, "-m", "shoes_vz.cli.main", "template", "warm", TEMPLATE, "--slots", str(slots),
                    "--config", str(stack.config_file)], check=True, capture_output=True)


async def measure(root: Path, n: int, boot_delay: float, restore_delay: float,
                  console: Console) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stack = LocalStack(root, max_runners=2, boot_delay=boot_delay, restore_delay=restore_delay)
    try:
        await stack.start()
        console.print(f"[bold]cold: {n} runners (boot delay {boot_delay:g} s)[/]")
        cold = await series(stack, n, "cold", console)
        t0 = time.monotonic()
        await asyncio.to_thread(warm_slots, stack, 2)
        made = time.monotonic() - t0
        await stack.wait_free_warm_slots(TEMPLATE, 2)  # the agent reports new slots with its next Sync
        console.print(f"[bold]warm: 2 slots made in {made:.1f} s, in use {time.monotonic() - t0:.1f} s after the "
                      f"command started; {n} runners (restore delay {restore_delay:g} s)[/]")
        warm = await series(stack, n, "warm", console)
    finally:
        await stack.stop()
    return cold, warm


def stats(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [r["timings"][key] for r in rows if r.get("timings", {}).get(key) is not None]
    return 1000 * percentile(values, 50), 1000 * percentile(values, 95)


def report(console: Console, cold: list[dict[str, Any]], warm: list[dict[str, Any]], boot_delay: float,
           restore_delay: float) -> bool:
    restored = sum(1 for r in warm if r.get("restored") is True)
    table = Table(title=f"SIM ONLY — boot modelled as {boot_delay:g} s, restore as {restore_delay:g} s "
                        f"({restored}/{len(warm)} warm runners restored)")
    for col in ("phase", "cold P50 ms", "cold P95 ms", "warm P50 ms", "warm P95 ms", "cold/warm (P50)"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for key in ("boot_to_ssh", "total"):
        c, w = stats(cold, key), stats(warm, key)
        table.add_row(key, f"{c[0]:.1f}", f"{c[1]:.1f}", f"{w[0]:.1f}", f"{w[1]:.1f}",
                      f"{c[0] / w[0]:.1f}×" if w[0] else "-")
    c, w = stats(cold, "boot_to_ssh"), stats(warm, "boot_to_ssh")
    table.add_row("overhead (boot_to_ssh − delay)", f"{c[0] - 1000 * boot_delay:.1f}",
                  f"{c[1] - 1000 * boot_delay:.1f}", f"{w[0] - 1000 * restore_delay:.1f}",
                  f"{w[1] - 1000 * restore_delay:.1f}", "")
    console.print(table)
    return restored == len(warm) and len(cold) == len(warm)


async def amain(args: argparse.Namespace, console: Console) -> int:
    ok = True
    passes = [(args.boot_delay, args.restore_delay), (0.0, 0.0)]
    with tempfile.TemporaryDirectory(prefix="shoes-vz-bench-warm-") as tmp:
        for i, (boot, restore) in enumerate(passes):
            cold, warm = await measure(Path(tmp) / f"pass{i}", args.runners, boot, restore, console)
            ok = report(console, cold, warm, boot, restore) and ok
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--runners", type=int, default=10)
    p.add_argument("--boot-delay", type=float, default=1.0, help="sim cold boot, seconds (an assumption)")
    p.add_argument("--restore-delay", type=float, default=0.1, help="sim restore, seconds (an assumption)")
    console = Console(width=None if sys.stdout.isatty() else 140)
    return asyncio.run(amain(p.parse_args(argv), console))


if __name__ == "__main__":
    sys.exit(main())
