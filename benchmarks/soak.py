#!/usr/bin/env python3
"""Soak: many sequential sim runner lifecycles through a real server and agent, and what they cost the
two daemons — memory, open file descriptors, threads — and the database.

    python benchmarks/soak.py [--count 1000] [--mode loopback|namespaced|auto]      (`make soak`)

`LocalStack` runs the server and one sim agent as real processes on loopback; this script is myshoes:
over plain gRPC with the shoes token (the go-plugin host adds nothing to count here) each lifecycle is
AddInstance (answered once the runner is SSH-ready with its setup_script started), then
DeleteInstance; the next AddInstance is asked for as soon as the delete is acknowledged, so one runner
is torn down while the next boots (the agent's two slots), as in production.

Samples — the agent's and the server's RSS, open fds (/proc/PID/fd) and threads (/proc/PID/status),
and the database's size (pages in use, WAL included) — are taken at the start, every `--every`
lifecycles (default: a tenth of the count) and at the end, once every runner is gone. A leak is a
figure of the last sample that exceeds the first tenth's sample by more than `Tolerance` (the first
tenth warms the caches, pools and the allocator up); then the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from shoes_vz.stack import LocalStack  # noqa: E402
from shoes_vz.vm.bundle import Bundle  # noqa: E402
from shoes_vz.wire import shoes_pb2 as spb  # noqa: E402
from shoes_vz.wire import shoes_pb2_grpc as sgrpc  # noqa: E402

# what myshoes retries; the only one a sequential run may meet is a slot still held by the runner being
# torn down (RESOURCE_EXHAUSTED), anything else fails the soak
RETRIED = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class ProcStats:
    rss_kib: int
    fds: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> ProcStats:
        status = Path(f"/proc/{pid}/status").read_text()
        kv = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return cls(int(kv["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")), int(kv["Threads"]))


@dataclass(frozen=True)
class Sample:
    lifecycles: int
    agent: ProcStats
    server: ProcStats
    db_kib: int

    def figures(self) -> dict[str, int]:
        out = {f"agent {f.name}": getattr(self.agent, f.name) for f in fields(ProcStats)}
        out |= {f"server {f.name}": getattr(self.server, f.name) for f in fields(ProcStats)}
        return out | {"db_kib": self.db_kib}


@dataclass(frozen=True)
class Tolerance:
    """How much a figure may grow from the first tenth's sample to the end, whatever the count."""

    rss_kib: int = 16 << 10   # allocator and import noise; a leak of 16 KiB a lifecycle shows within 1,000
    fds: int = 3
    threads: int = 3
    db_kib: int = 256         # sqlite page reuse and index growth (the WAL is checkpointed into the same pages)

    def of(self, figure: str) -> int:
        return int(getattr(self, figure.split()[-1]))


@dataclass
class SoakResult:
    count: int
    mode: str = ""
    seconds: float = 0.0
    lifecycle_seconds: list[float] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    def baseline(self) -> Sample:
        """The sample at the end of the first tenth (the run's first sample if it has none)."""
        tenth = self.count // 10
        return next((s for s in self.samples if s.lifecycles >= tenth), self.samples[0])

    def leaks(self, tol: Tolerance) -> list[str]:
        first, last = self.baseline().figures(), self.samples[-1].figures()
        return [f"{k} grew by {last[k] - first[k]} (tolerance {tol.of(k)}) from lifecycle "
                f"{self.baseline().lifecycles} to {self.samples[-1].lifecycles}"
                for k in first if last[k] - first[k] > tol.of(k)]


def db_kib(db: Path) -> int:
    """Pages in use (what a read sees: the WAL's too), not the files' sizes, which a checkpoint changes."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        pages, size = c.execute("PRAGMA page_count").fetchone()[0], c.execute("PRAGMA page_size").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * size) // 1024


def sample(stack: LocalStack, lifecycles: int) -> Sample:
    return Sample(lifecycles, ProcStats.of(stack.procs["agent"].pid), ProcStats.of(stack.procs["server"].pid),
                  db_kib(stack.db_path))


async def settle(stack: LocalStack, timeout: float = 60.0) -> None:
    """Until the agent has no runner left (its runner-state.json says so)."""
    deadline = time.monotonic() + timeout
    while stack.runner_state().get("runners", [None]):
        if time.monotonic() > deadline:
            raise AssertionError(f"runners left after {timeout:.0f}s: {stack.runner_state().get('runners')}")
        await asyncio.sleep(0.05)


async def add(stub: sgrpc.ShoesServiceStub, md: tuple[tuple[str, str], ...], name: str,
              result: SoakResult) -> spb.AddInstanceResponse:
    while True:
        try:
            reply: spb.AddInstanceResponse = await stub.AddInstance(
                spb.AddInstanceRequest(runner_name=name, setup_script="true\n", resource_type="small"),
                metadata=md, timeout=120)
            return reply
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise AssertionError(f"{name}: {e.code().name} {e.details()}") from None
            result.retries[e.code().name] = result.retries.get(e.code().name, 0) + 1
            await asyncio.sleep(0.02)


async def lifecycles(stack: LocalStack, count: int, result: SoakResult, on_each: Callable[[int], None]) -> None:
    md = (("authorization", f"Bearer {stack.token}"),)
    async with grpc.aio.insecure_channel(stack.server_addr) as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        for i in range(count):
            on_each(i)
            t0 = time.monotonic()
            reply = await add(stub, md, f"soak-{i}", result)
            if not reply.ip_address:
                raise AssertionError(f"soak-{i}: ready without an address")
            if i == 0:
                result.mode += f", first guest at {reply.ip_address}"
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=md, timeout=30)
            result.lifecycle_seconds.append(time.monotonic() - t0)


async def soak(root: Path, count: int, every: int, mode: str,
               progress: Callable[[str], None] | None = None) -> SoakResult:
    # nothing of a lifecycle waits for the guest's /status: one poll of it per runner is plenty here
    # the server's retention runs within the soak: it keeps fewer gone runners than the first tenth's sample
    # counts, so from there on the database's pages in use stay flat (server.history_keep)
    stack = LocalStack(root, guest_poll_interval=30.0, driver_options={"mode": mode},
                       server_settings={"history_keep": max(1, count // 20)})
    result = SoakResult(count, mode=f"sim mode {mode}")
    await stack.start()
    try:
        t0 = time.monotonic()

        def at(i: int) -> None:
            if i % every == 0:
                result.samples.append(sample(stack, i))
                if progress is not None and i:
                    progress(f"{i} lifecycles, {time.monotonic() - t0:.0f}s")

        await lifecycles(stack, count, result, at)
        await settle(stack)
        result.seconds = time.monotonic() - t0
        result.samples.append(sample(stack, count))
        left = Bundle.all_in(stack.runners_dir)
        if left:
            raise AssertionError(f"bundles left after the last delete: {[str(b.path) for b in left]}")
    finally:
        await stack.stop()
    return result


def report(r: SoakResult, tol: Tolerance) -> str:
    names = list(r.samples[0].figures())
    head = f"  {'after':>6} " + " ".join(f"{n:>14}" for n in names)
    rows = [f"  {s.lifecycles:>6} " + " ".join(f"{v:>14}" for v in s.figures().values()) for s in r.samples]
    first, last = r.baseline().figures(), r.samples[-1].figures()
    growth = f"  {'growth':>6} " + " ".join(f"{last[n] - first[n]:>+14}" for n in names)
    limit = f"  {'limit':>6} " + " ".join(f"{tol.of(n):>+14}" for n in names)
    return "\n".join([
        f"soak: {r.count} sequential lifecycles in {r.seconds:.0f}s ({r.mode}); lifecycle median "
        f"{statistics.median(r.lifecycle_seconds):.3f}s, max {max(r.lifecycle_seconds):.3f}s "
        f"(AddInstance to DeleteInstance acknowledged); retried {r.retries or 'never'}",
        head, *rows,
        f"  growth: from the sample after {r.baseline().lifecycles} (the first tenth) to the end", growth, limit])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="sequential lifecycles (default 1000)")
    p.add_argument("--every", type=int, default=0, help="sample every N lifecycles (default: count/10)")
    p.add_argument("--mode", default="loopback", choices=("loopback", "namespaced", "auto"),
                   help="the sim's mode (default loopback: the daemons' costs, at twice the namespaced speed)")
    p.add_argument("--keep", type=Path, default=None, help="run in this directory and keep it")
    a = p.parse_args(argv)
    if a.count < 1:
        p.error("--count must be at least 1")
    every = a.every or max(1, a.count // 10)
    tol = Tolerance()
    with contextlib.ExitStack() as es:
        root = a.keep or Path(es.enter_context(tempfile.TemporaryDirectory(prefix="shoes-vz-soak-")))
        result = asyncio.run(soak(root / "stack", a.count, every, a.mode, progress=lambda m: print(m, flush=True)))
    print(report(result, tol))
    leaks = result.leaks(tol)
    for leak in leaks:
        print(f"LEAK: {leak}")
    print("no figure grew beyond its tolerance" if not leaks else f"{len(leaks)} figure(s) leaked")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
