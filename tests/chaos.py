#!/usr/bin/env python3
"""Fault injection: a server and a sim agent (real processes, `LocalStack`) serve concurrent myshoes
lifecycles whose setup scripts run long, while the agent, the server and VM processes are killed
(SIGKILL) or the agent stopped (SIGSTOP, then SIGCONT) at seeded random points.

    python tests/chaos.py [--seed 1] [--seconds 300] [--workers 3]            (`make chaos`)

Each worker is myshoes: AddInstance for a new runner name (sometimes twice at once, as a retry racing
its original), retried on every code myshoes retries until it succeeds, the runner held a moment,
then DeleteInstance, retried up to 10 times (NOT_FOUND is done). Invariants:

- `max_runners`: never more live VM processes than the agent's max_runners (sampled every 0.1 s);
- `one_runner_per_name`: never two serving runner rows with one name (a failed one being torn down
  beside its replacement is not serving), and concurrent AddInstance calls for one name never answer
  two serving runners;
- `only_retried_codes`: no INVALID_ARGUMENT (myshoes drops the job for good) for a valid request;
- `delete_lost`: every acknowledged delete ends with the runner gone in the server's database;
- `bundle_left` / `guest_process_left`: no bundle and no process its setup script started outlive a
  deleted runner (each script runs `sleep <unique number>`, found in /proc).

The end state is checked after the faults stop and every runner was deleted, within `converge`
seconds. Also measured: resync time after each server restart (from its spawn to the agent being
online in its database). `Sabotage` breaks one piece of the harness' own honesty per invariant, so a
test shows that each check can fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from shoes_vz.core.states import Phase  # noqa: E402
from shoes_vz.stack import LocalStack  # noqa: E402
from shoes_vz.vm.bundle import Bundle  # noqa: E402
from shoes_vz.wire import shoes_pb2 as spb  # noqa: E402
from shoes_vz.wire import shoes_pb2_grpc as sgrpc  # noqa: E402

INVARIANTS = ("max_runners", "one_runner_per_name", "only_retried_codes", "delete_lost", "bundle_left",
              "guest_process_left")
FAULTS = ("kill_agent", "stop_agent", "kill_server", "kill_vm")
# a runner that serves its name: a failed one, or one whose delete was asked for, is replaced by the next
# AddInstance for that name (shoes_service: never repair a failed runner) and only torn down meanwhile
SERVING = (f"deleted_at IS NULL AND delete_requested=0 AND state NOT IN ('{Phase.ERROR.value}', "
           f"'{Phase.TEARING_DOWN.value}')")
DELETE_TRIES = 10  # myshoes gives a delete up after this many


@dataclass(frozen=True)
class Sabotage:
    """Each one makes one invariant false on purpose (the test that every check can fail)."""

    leave_process: bool = False    # a `sleep` with a deleted runner's number, started by the harness
    leave_bundle: bool = False     # a bundle directory for a deleted runner, made by the harness
    skip_delete: bool = False      # one runner counted as deleted without DeleteInstance being sent
    invalid_request: bool = False  # one AddInstance with an unknown resource type, counted as valid
    duplicate_row: bool = False    # a second live row for one runner name, written into the database
    max_runners: int = 0           # check against this many instead of the agent's max_runners


@dataclass
class Deleted:
    name: str
    runner_id: str
    marker: str


@dataclass
class ChaosResult:
    seed: int
    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    resync: list[float] = field(default_factory=list)
    most_vms: int = 0
    deletes_given_up: int = 0
    violations: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def violate(self, invariant: str, detail: str) -> None:
        assert invariant in INVARIANTS
        if (invariant, detail) not in self.violations:
            self.violations.append((invariant, detail))

    def broken(self) -> set[str]:
        return {inv for inv, _ in self.violations}


def _cmdlines() -> list[tuple[int, bytes]]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (p / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            out.append((int(p.name), (p / "cmdline").read_bytes()))
    return out


def _parent(pid: int) -> int:
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return 0


def vm_pids(runners_dir: Path) -> list[int]:
    """Live VM processes of this stack (`python -m shoes_vz.vm.process BUNDLE …`); not a VM process's
    own child of a moment (a fork before its exec bears the parent's command line)."""
    where = str(runners_dir).encode()
    pids = [pid for pid, cmd in _cmdlines() if b"shoes_vz.vm.process" in cmd and where in cmd]
    return [pid for pid in pids if _parent(pid) not in pids]


def describe(pid: int) -> str:
    """pid, parent and command line of a process (for a violation's detail)."""
    with contextlib.suppress(OSError):
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"pid {pid} (parent {ppid}): {cmd}"
    return f"pid {pid} (gone)"


def marker_pids(marker: str) -> list[int]:
    needle = b"sleep\0" + marker.encode() + b"\0"
    return [pid for pid, cmd in _cmdlines() if cmd.startswith(needle) or b"\0" + needle in cmd]


def _db(stack: LocalStack) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True, timeout=5)


def duplicate_names(stack: LocalStack) -> list[str]:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_db(stack)) as c:
        return [n for (n,) in c.execute(f"SELECT runner_name FROM runners WHERE {SERVING} "
                                        "GROUP BY runner_name HAVING COUNT(*) > 1")]
    return []


def serving(stack: LocalStack, runner_ids: list[str]) -> list[str]:
    with contextlib.closing(_db(stack)) as c:
        return [r for r in runner_ids if c.execute(f"SELECT 1 FROM runners WHERE runner_id=? AND {SERVING}",
                                                     (r,)).fetchone()]


def live_rows(stack: LocalStack, runner_ids: list[str]) -> list[str]:
    with contextlib.closing(_db(stack)) as c:
        return [r for r in runner_ids
                if c.execute("SELECT 1 FROM runners WHERE runner_id=? AND deleted_at IS NULL", (r,)).fetchone()]


class Chaos:
    def __init__(self, root: Path, seed: int, seconds: float, workers: int = 3, max_runners: int = 2,
                 sabotage: Sabotage = Sabotage(), converge: float = 60.0, inject: bool = True) -> None:
        self.rng = random.Random(seed)
        self.result = ChaosResult(seed)
        self.seconds, self.workers, self.converge, self.sabotage = seconds, workers, converge, sabotage
        self.inject = inject  # False: the lifecycles alone, for `seconds`
        self.limit = sabotage.max_runners or max_runners
        self.stack = LocalStack(root, max_runners=max_runners, guest_poll_interval=1.0,
                                driver_options={"mode": "loopback"},
                                server_settings={"agent_offline_after": 5.0, "command_resend_after": 2.0})
        self.md = (("authorization", f"Bearer {self.stack.token}"),)
        self.deleted: list[Deleted] = []
        self.names = 0
        self.stopping = False
        self.invalid_sent = False
        self.server_ready = asyncio.Event()

    # the myshoes side ----------------------------------------------------------------------------------
    def _code(self, e: grpc.aio.AioRpcError, what: str) -> None:
        self.result.codes[e.code().name] += 1
        if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
            self.result.violate("only_retried_codes", f"{what}: INVALID_ARGUMENT {e.details()}")

    async def _add(self, stub: sgrpc.ShoesServiceStub, name: str, script: str,
                   resource_type: str = "small") -> spb.AddInstanceResponse | None:
        deadline = time.monotonic() + 120
        while not self.stopping:  # then a runner it may have made is no acknowledged one: not checked
            if time.monotonic() > deadline:
                raise AssertionError(f"AddInstance {name} never succeeded within 120 s")
            try:
                reply: spb.AddInstanceResponse = await stub.AddInstance(spb.AddInstanceRequest(
                    runner_name=name, setup_script=script, resource_type=resource_type), metadata=self.md, timeout=60)
                self.result.codes["OK"] += 1
                return reply
            except grpc.aio.AioRpcError as e:
                self._code(e, f"AddInstance {name}")
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    return None
                await asyncio.sleep(0.3 + self.rng.random())
        return None

    async def _delete(self, stub: sgrpc.ShoesServiceStub, reply: spb.AddInstanceResponse) -> bool:
        for _ in range(DELETE_TRIES):
            try:
                await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id), metadata=self.md,
                                          timeout=30)
                self.result.codes["OK"] += 1
                return True
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    self.result.codes["NOT_FOUND"] += 1
                    return True
                self._code(e, f"DeleteInstance {reply.cloud_id}")
                await asyncio.sleep(0.5 + self.rng.random())
        self.result.deletes_given_up += 1
        return False

    async def lifecycle(self, stub: sgrpc.ShoesServiceStub) -> None:
        self.names += 1
        name = f"chaos-{self.result.seed}-{self.names}"
        marker = f"{9_000_000 + self.result.seed % 1000 * 10_000 + self.names}"
        script = f"sleep {marker}\n"  # the job: runs until its runner is torn down
        if self.rng.random() < 0.3:  # a retry racing its original: both must answer one runner
            replies = await asyncio.gather(self._add(stub, name, script), self._add(stub, name, script))
            ids = sorted({r.cloud_id.removeprefix("shoes-vz-") for r in replies if r is not None})
            if len(await asyncio.to_thread(serving, self.stack, ids)) > 1:
                self.result.violate("one_runner_per_name", f"{name}: concurrent AddInstance answered {ids}, "
                                    "both serving")
            first, second = replies
            if first is not None and second is not None and second.cloud_id != first.cloud_id:
                await self._delete(stub, second)  # the replacement of a failed first: deleted as well
            reply = first or second
        else:
            reply = await self._add(stub, name, script)
        if reply is None:
            return
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        runner_id = reply.cloud_id.removeprefix("shoes-vz-")
        skip = self.sabotage.skip_delete and not any(d.name.endswith("-skipped") for d in self.deleted)
        if skip or await self._delete(stub, reply):
            self.deleted.append(Deleted(name + ("-skipped" if skip else ""), runner_id, marker))
            self.result.rounds += 1
            await self._sabotage_after_delete(runner_id, marker)

    async def _sabotage_after_delete(self, runner_id: str, marker: str) -> None:
        s = self.sabotage
        if s.leave_process and len(self.deleted) == 1:
            await asyncio.create_subprocess_exec("sleep", marker, start_new_session=True)
        if s.leave_bundle and len(self.deleted) == 1:
            await asyncio.sleep(3)  # after the agent's own teardown removed it
            Bundle.for_runner(self.stack.runners_dir, runner_id).path.mkdir(parents=True, exist_ok=True)

    async def worker(self) -> None:
        async with grpc.aio.insecure_channel(self.stack.server_addr) as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            if self.sabotage.invalid_request and not self.invalid_sent:
                self.invalid_sent = True
                await self._add(stub, "chaos-invalid", "true\n", resource_type="huge")
            while not self.stopping:
                await self.lifecycle(stub)

    # the faults --------------------------------------------------------------------------------------
    async def _kill(self, name: str) -> None:
        p = self.stack.procs[name]
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        await p.wait()

    async def fault(self, kind: str) -> None:
        self.result.faults[kind] += 1
        if kind == "kill_agent":
            await self._kill("agent")
            await asyncio.sleep(self.rng.uniform(0, 1.5))
            await self.stack.spawn("agent")
        elif kind == "stop_agent":
            p = self.stack.procs["agent"]
            p.send_signal(signal.SIGSTOP)
            await asyncio.sleep(self.rng.uniform(0.5, 4.0))
            p.send_signal(signal.SIGCONT)
        elif kind == "kill_server":
            await self._kill("server")
            await asyncio.sleep(self.rng.uniform(0, 1.0))
            t0 = time.monotonic()
            await self.stack.spawn("server")
            # serving first: until it has opened its database, the dead server's view of the agent is there
            await self.stack.wait_server()
            await self.stack.wait_agent(timeout=60)
            self.result.resync.append(time.monotonic() - t0)
        elif kind == "kill_vm":
            pids = vm_pids(self.stack.runners_dir)
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
            else:
                self.result.faults[kind] -= 1

    async def faults(self) -> None:
        deadline = time.monotonic() + self.seconds
        kinds = list(FAULTS)
        while time.monotonic() < deadline:
            if not self.inject:
                await asyncio.sleep(deadline - time.monotonic())
                return
            await asyncio.sleep(self.rng.uniform(0.5, 2.5))
            # every kind early on (a short run sees them all), then at random
            kind = kinds.pop(0) if kinds else self.rng.choice(FAULTS)
            await self.fault(kind)

    # the checks --------------------------------------------------------------------------------------
    async def monitor(self) -> None:
        while not self.stopping:
            vms = await asyncio.to_thread(vm_pids, self.stack.runners_dir)
            self.result.most_vms = max(self.result.most_vms, len(vms))
            if len(vms) > self.limit:
                self.result.violate("max_runners", f"{len(vms)} VM processes running, max_runners {self.limit}: "
                                    + "; ".join(describe(pid) for pid in vms))
            for name in await asyncio.to_thread(duplicate_names, self.stack):
                self.result.violate("one_runner_per_name", f"{name}: two serving runner rows")
            await asyncio.sleep(0.1)

    def _duplicate_a_row(self) -> None:
        with contextlib.closing(sqlite3.connect(self.stack.db_path, timeout=10)) as c, c:
            row = c.execute("SELECT * FROM runners WHERE deleted_at IS NULL LIMIT 1").fetchone()
            if row is not None:
                c.execute(f"INSERT INTO runners VALUES ({','.join('?' * len(row))})", ("dup-" + row[0], *row[1:]))

    async def end_state(self) -> None:
        """After the faults: every acknowledged delete done, nothing of a deleted runner left."""
        deadline = time.monotonic() + self.converge
        while True:
            rows = await asyncio.to_thread(live_rows, self.stack, [d.runner_id for d in self.deleted])
            bundles = [d for d in self.deleted if Bundle.for_runner(self.stack.runners_dir, d.runner_id).path.exists()]
            procs = [(d, pids) for d in self.deleted if (pids := marker_pids(d.marker))]
            if not (rows or bundles or procs) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for r in rows:
            self.result.violate("delete_lost", f"runner {r}: acknowledged delete, still live in the database")
        for d in bundles:
            self.result.violate("bundle_left", f"{d.name}: bundle {d.runner_id} left")
        for d, pids in procs:
            self.result.violate("guest_process_left", f"{d.name}: `sleep {d.marker}` still runs (pids {pids})")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def run(self) -> ChaosResult:
        t0 = time.monotonic()
        await self.stack.start()
        try:
            monitor = asyncio.create_task(self.monitor())
            workers = [asyncio.create_task(self.worker()) for _ in range(self.workers)]
            if self.sabotage.duplicate_row:
                await asyncio.sleep(3)
                await asyncio.to_thread(self._duplicate_a_row)
            await self.faults()
            self.stopping = True
            await asyncio.gather(*workers)
            await self.end_state()
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        finally:
            self.stopping = True
            await self.stack.stop()
        self.result.seconds = time.monotonic() - t0
        return self.result


def report(r: ChaosResult) -> str:
    rs = r.resync
    resync = (f"{min(rs):.2f} / {statistics.median(rs):.2f} / {max(rs):.2f} s over {len(rs)} restarts"
              if rs else "no server restart")
    lines = [
        f"chaos seed {r.seed}: {r.rounds} lifecycles in {r.seconds:.0f}s; most VMs at once {r.most_vms}",
        "  faults: " + ", ".join(f"{k} {r.faults[k]}" for k in FAULTS),
        "  codes seen: " + ", ".join(f"{k} {v}" for k, v in sorted(r.codes.items())),
        f"  deletes given up after {DELETE_TRIES} tries: {r.deletes_given_up}",
        f"  resync after a server restart (min / median / max): {resync}",
    ]
    broken = r.broken()
    lines += [f"  {inv:<20} {'VIOLATED' if inv in broken else 'held'}" for inv in INVARIANTS]
    lines += [f"    {inv}: {detail}" for inv, detail in r.violations]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds", type=float, default=300.0, help="how long faults are injected (default 300)")
    p.add_argument("--workers", type=int, default=3, help="concurrent myshoes lifecycles (default 3)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shoes-vz-chaos-") as root:
        result = asyncio.run(Chaos(Path(root) / "stack", a.seed, a.seconds, a.workers).run())
    print(report(result))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
