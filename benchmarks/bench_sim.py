#!/usr/bin/env python3
"""The sim guest's own start-up cost: namespaced (namespaces + bridge + DHCP) next to loopback.

    python benchmarks/bench_sim.py [--runners 10]

`--runners` sim VMs one after another in each mode, started by hand (`python -m
shoes_vz.vm.process`, as the agent starts them, no server or agent), from spawn to:

- **started**: the VM process recorded `started_at` (interpreter and driver start; both modes);
- **address**: the guest's lease is in the lease file (namespaced: PID 1 built the guest's root,
  its veth is on the bridge, udhcpc got an address from dnsmasq and the lease script wrote it;
  loopback: the driver picked a 127.100.x.y and wrote the lease itself);
- **sshd**: the guest's sshd logged "Server listening" and the guest holds its address (for a
  namespaced guest the later of the two: its sshd may start before DHCP is done);
- **ssh ready**: the agent's probe (`shoes_vz.agent.ssh.wait_ready`, pinned host key) ran `true`;
- **stop**: a clean shutdown through the control socket until the VM process exited (namespaced:
  every guest process asked to end, the DHCP client last, releasing its lease).

The first namespaced VM of a fresh network also pays for the bridge and dnsmasq: that row is
printed alone. Ratios are namespaced / loopback (P50), measured in the same run. The loopback mode
needs no root; the namespaced one runs only as root on Linux with the tools (else: said, skipped).
Informational: the exit status is 0 unless a VM failed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.simvm

import asyncssh  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shoes_vz.agent import ssh as agent_ssh  # noqa: E402
from shoes_vz.agent.ssh_ca import source_address_toward  # noqa: E402
from shoes_vz.core.timings import percentile  # noqa: E402
from shoes_vz.template import Template, init_sim  # noqa: E402
from shoes_vz.vm.drivers.sim_options import namespaced_missing  # noqa: E402
from tests.simvm import TEST_CA, SimVM, links_of, wait_until  # noqa: E402

PHASES = ("started", "address", "sshd", "ssh ready", "stop")


@dataclass
class Run:
    mode: str
    times: dict[str, float] = field(default_factory=dict)
    error: str = ""


def one(template: Template, work: Path, mode: str, i: int) -> Run:
    res = Run(mode)
    vm = SimVM(template, work / "runners", work / "dhcpd_leases", f"{mode}-{i}", driver_options={"mode": mode})
    t0 = time.time()
    vm.start()
    try:
        meta = wait_until(lambda: (m := vm.bundle.read_metadata()).get("started_at") and m, 30)
        if not meta:
            res.error = f"did not start: {vm.log()[-300:]}"
            return res
        res.times["started"] = float(meta["started_at"]) - t0
        ip = vm.wait_address(30)
        res.times["address"] = time.time() - t0
        vm.wait_listening(30)
        res.times["sshd"] = float(vm.bundle.read_metadata()["sshd_listening_at"]) - t0
        m = template.meta
        answer = vm.hello()  # as the agent does: the runner channel names the per-boot host key and trusts our CA
        cred = TEST_CA.issue(vm.name, 120, source_address_toward(ip))

        async def probe() -> None:
            conn = await agent_ssh.wait_ready(ip, m.ssh_port, m.ssh_user, cred.client_key,
                                              asyncssh.import_public_key(answer["host_key"]), 30)
            conn.close()

        asyncio.run(probe())
        res.times["ssh ready"] = time.time() - t0
        t1 = time.time()
        code = vm.stop()
        res.times["stop"] = time.time() - t1
        if code != 0:
            res.error = f"stopped with status {code}"
    except (AssertionError, OSError, asyncssh.Error) as e:
        res.error = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        vm.kill()
        shutil.rmtree(vm.bundle.path, ignore_errors=True)
    return res


def series(template: Template, work: Path, mode: str, n: int, console: Console) -> list[Run]:
    out = []
    for i in range(n):
        r = one(template, work, mode, i)
        out.append(r)
        if r.error:
            console.print(f"  {mode}-{i}: [red]{r.error}[/]")
    return out


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def report(console: Console, runs: dict[str, list[Run]], first: Run | None) -> None:
    table = Table(title="sim guest start-up, from spawning `vm run` (ms; nearest-rank)")
    for col in ("phase", "loopback P50", "loopback P95", "namespaced P50", "namespaced P95", "namespaced/loopback"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for phase in PHASES:
        row = [phase]
        p50 = {}
        for mode in ("loopback", "namespaced"):
            vals = [r.times[phase] for r in runs.get(mode, []) if phase in r.times]
            p50[mode] = percentile(vals, 50) if vals else None
            row += [ms(p50[mode]), ms(percentile(vals, 95) if vals else None)]
        lo, ns = p50["loopback"], p50["namespaced"]
        row.append(f"{ns / lo:.2f}×" if lo and ns else "-")
        table.add_row(*row)
    console.print(table)
    if first is not None:
        console.print("first namespaced VM of a fresh network (bridge + dnsmasq included): "
                      + ", ".join(f"{p} {ms(first.times.get(p))} ms" for p in PHASES))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--runners", type=int, default=10, help="VMs per mode, one after another")
    a = p.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    missing = namespaced_missing()
    with tempfile.TemporaryDirectory(prefix="shoes-vz-bench-sim-") as tmp:
        work = Path(tmp)
        loop_t = init_sim(work / "templates", "loop")
        runs = {"loopback": series(loop_t, work / "loop", "loopback", a.runners, console)}
        first = None
        if missing:
            console.print("[yellow]namespaced sim unavailable here[/] (needs " + ", ".join(missing) + "): "
                          "loopback figures only")
        else:
            ns_t = init_sim(work / "templates", "ns")
            first = one(ns_t, work / "ns-first", "namespaced", 0)
            runs["namespaced"] = series(ns_t, work / "ns", "namespaced", a.runners, console)
            for d in ("ns-first", "ns"):  # a network outlives its last VM by its linger
                wait_until(lambda d=d: not links_of(work / d / "dhcpd_leases"), 15)
        report(console, runs, first)
    failed = [r for rs in runs.values() for r in rs if r.error] + ([first] if first and first.error else [])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
