#!/usr/bin/env python3
"""Fast-path benchmark (`make bench`): ours next to the seed's approach, measured in the same run.

    python benchmarks/bench_fastpath.py [--runners 20] [--boot-delay 0.5] [--baseline-runs 10]

1. N sequential sim runners through a real server + agent (`LocalStack`): clone / boot_to_ssh /
   total P50/P95, and the SSH-ready detection lag = ssh_ready_at (agent's asyncssh probe succeeded)
   − sshd_listening_at (the guest's sshd logged "Server listening" and the guest holds its address),
   both from the bundle's RuntimeMetadata.json.
2. Baseline: the seed's §5.5 loop — `ssh -o BatchMode=yes -o ConnectTimeout=1 … true`, `sleep 1`
   between failures — against the same sim guest, started by hand (`python -m shoes_vz.vm.process`),
   polling from the VM-started instant; lag = first success − sshd_listening_at.
3. Clone micro-benchmark: `clone_file` (FICLONE) of the template's 64 GiB sparse Disk.img on XFS
   reflink next to a sparse full copy (the `allow_copy` path) of the same file.

As root the whole run lives on a fresh XFS reflink loop mount (tests/xfs.py), so clones are real
reflinks; otherwise in a temp dir, with a warning. Informational: exit 0 unless something failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.xfs

import asyncssh  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shoes_vz.agent import ssh as agent_ssh  # noqa: E402
from shoes_vz.agent.ssh_ca import source_address_toward  # noqa: E402
from shoes_vz.core.timings import percentile  # noqa: E402
from shoes_vz.demo import PluginCaller, RunResult, drive_runner  # noqa: E402
from shoes_vz.plugin.install import install_plugin  # noqa: E402
from shoes_vz.stack import TEMPLATE, LocalStack, free_port  # noqa: E402
from shoes_vz.template import Template  # noqa: E402
from shoes_vz.template.store import TemplateStore  # noqa: E402
from shoes_vz.vm.bundle import Bundle  # noqa: E402
from shoes_vz.vm.clone import CloneCopyWarning, clone_file, filesystem_type  # noqa: E402
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases, remove_leases_for  # noqa: E402
from tests.simvm import TEST_CA, say_hello  # noqa: E402
from tests.xfs import xfs_reflink_mount, xfs_unavailable  # noqa: E402

LAG_TARGET = 0.050  # detection lag p95 ≤ 50 ms
CLONE_TARGET = 0.005  # clone p95 ≤ 5 ms on XFS reflink
DATA_BYTES = 256 << 20  # the "disk with data" clone row


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def p50_p95(values: list[float]) -> tuple[float | None, float | None]:
    return percentile(values, 50), percentile(values, 95)


# -- 1. ours: sim runners through server + agent ------------------------------------------------


@dataclass
class Ours:
    result: RunResult
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def lag(self) -> float | None:
        a, b = self.meta.get("ssh_ready_at"), self.meta.get("sshd_listening_at")
        return float(a) - float(b) if a is not None and b is not None else None

    @property
    def boot(self) -> float | None:  # VM started → sshd listening (boot delay + sshd start)
        a, b = self.meta.get("sshd_listening_at"), self.meta.get("started_at")
        return float(a) - float(b) if a is not None and b is not None else None


async def _watch_metadata(stack: LocalStack, name: str) -> dict[str, Any]:
    """The runner's RuntimeMetadata.json once it has ssh_ready_at (the bundle goes at delete)."""
    while True:
        r = next((r for r in stack.runner_state().get("runners", []) if r.get("runner_name") == name), None)
        if r and r.get("bundle"):
            with contextlib.suppress(Exception):
                meta = await asyncio.to_thread(Bundle(Path(r["bundle"])).read_metadata)
                if "ssh_ready_at" in meta:
                    return meta
        await asyncio.sleep(0.01)


async def run_ours(stack: LocalStack, n: int, console: Console) -> list[Ours]:
    out: list[Ours] = []
    # through the myshoes plugin, one process per call, as `make run` and myshoes do
    plugin = await asyncio.to_thread(install_plugin, stack.root / "shoes-vz-plugin")
    caller = PluginCaller(plugin, stack.server_addr, stack.token)
    for i in range(n):
        name = f"bench-runner-{i + 1}"
        watcher = asyncio.create_task(_watch_metadata(stack, name))
        try:
            res = await drive_runner(stack, caller, name)
        finally:
            meta: dict[str, Any] = {}
            if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
                meta = watcher.result()
            else:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        if not meta and not res.error:
            res.error = "RuntimeMetadata.json never had ssh_ready_at"
        o = Ours(res, meta)
        out.append(o)
        console.print(f"  {name}: " + (f"[red]{res.error}[/]" if res.error else
                                        f"boot_to_ssh {ms(res.timings.get('boot_to_ssh'))} ms, "
                                        f"detection lag {ms(o.lag)} ms"))
    return out


# -- 2. baseline: the seed's 1 s ssh poll loop against a hand-started sim guest ------------------


@dataclass
class Baseline:
    lag: float | None = None
    boot_to_ssh: float | None = None
    attempts: int = 0
    ssh_floor: float | None = None  # one more `ssh … true` with the guest already up
    asyncssh_floor: list[float] = field(default_factory=list)  # the agent's probe, guest already up
    error: str = ""


def _ssh_argv(key: Path, port: int, user: str, ip: str) -> list[str]:
    return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=1", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-i", str(key), "-p", str(port), f"{user}@{ip}", "true"]


async def _ssh_true(key: Path, port: int, user: str, ip: str) -> int:
    p = await asyncio.create_subprocess_exec(
        *_ssh_argv(key, port, user, ip),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await p.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        await p.wait()
        raise


def _prepare_bundle(t: Template, bundles: Path, i: int, mac: MACAddress, allow_copy: bool) -> Bundle:
    b = Bundle(bundles / f"baseline-{i}.bundle")
    shutil.rmtree(b.path, ignore_errors=True)
    b.path.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CloneCopyWarning)
        clone_file(t.disk, b.disk, allow_copy=allow_copy)
        clone_file(t.aux_storage, b.aux_storage, allow_copy=allow_copy)
    for p in (b.disk, b.aux_storage):
        os.chmod(p, 0o600)
    shutil.copyfile(t.hardware_model, b.hardware_model)
    b.update_metadata(
        runner_id=f"baseline-{i}", runner_name=f"baseline-{i}", mac_address=str(mac), template=t.name,
        template_dir=str(t.path), driver="sim", notify_url="", ssh_port=t.meta.ssh_port,
        # the guest's runner-agent binds <guest ip>:port; nobody talks to it here
        ssh_user=t.meta.ssh_user, runner_agent_port=free_port(),
    )
    return b


async def _stop_vm(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _credential(work: Path, runner_id: str, ip: str) -> tuple[Path, Any]:
    """A key file with its certificate beside it (`ssh -i` loads KEY-cert.pub), for this runner alone."""
    cred = TEST_CA.issue(runner_id, 300, source_address_toward(ip))
    key = work / f"id_{runner_id}"
    for path in (key, Path(f"{key}-cert.pub")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # ssh refuses a key others can read
    with os.fdopen(fd, "wb") as f:
        f.write(cred.key.export_private_key())
    Path(f"{key}-cert.pub").write_bytes(cred.cert.export_certificate())
    return key, cred.client_key


async def baseline_once(t: Template, work: Path, i: int, boot_delay: float, allow_copy: bool,
                        live: dict[int, asyncio.subprocess.Process]) -> Baseline:
    res = Baseline()
    bundles, lease_file = work / "runners", work / "dhcpd_leases"
    mac = MACAddress.random_local()
    b = await asyncio.to_thread(_prepare_bundle, t, bundles, i, mac, allow_copy)
    with open(b.log_file, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoes_vz.vm.process", str(b.path), "--driver", "sim",
            "--boot-delay", str(boot_delay), "--lease-file", str(lease_file), "--stop-grace", "2",
            "--host-slots", str(work / "vm-slots"), "--host-limit", "64",  # its own, never the host's default
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    live[proc.pid] = proc
    try:
        deadline = time.monotonic() + 30
        # the VM-started instant: the loop starts when the VM process has recorded it
        while "started_at" not in b.read_metadata():
            if proc.returncode is not None or time.monotonic() > deadline:
                res.error = f"vm process did not start (status {proc.returncode}, log {b.log_file})"
                return res
            await asyncio.sleep(0.002)
        started_at = float(b.read_metadata()["started_at"])
        user, port = t.meta.ssh_user, t.meta.ssh_port
        ip, key, client_key, answer = "", Path(), None, {}
        while True:  # the seed's loop: find the address, `ssh … true`, `sleep 1` after a failure
            res.attempts += 1
            if not ip:
                lease = newest_lease_for(read_leases(lease_file), mac)
                ip = lease.ip if lease else ""
                if ip:  # today's guest admits nobody before the host's hello over its channel (as the agent does)
                    answer = await asyncio.to_thread(say_hello, b, f"baseline-{i}", TEST_CA)
                    key, client_key = _credential(work, f"baseline-{i}", ip)
            if ip and await _ssh_true(key, port, user, ip) == 0:
                ok_at = time.time()
                break
            if time.monotonic() > deadline:
                res.error = f"ssh never succeeded ({res.attempts} attempts)"
                return res
            await asyncio.sleep(1)
        meta = b.read_metadata()
        listening = meta.get("sshd_listening_at")
        res.lag = ok_at - float(listening) if listening is not None else None
        res.boot_to_ssh = ok_at - started_at
        # handshake floors with the guest already up: what any probe pays at the very least
        t0 = time.monotonic()
        if await _ssh_true(key, port, user, ip) == 0:
            res.ssh_floor = time.monotonic() - t0
        host_key = asyncssh.import_public_key(answer["host_key"])
        for _ in range(2):
            t0 = time.monotonic()
            conn = await agent_ssh.wait_ready(ip, port, user, client_key, host_key, 10)
            res.asyncssh_floor.append(time.monotonic() - t0)
            conn.close()
        return res
    finally:
        await _stop_vm(proc)
        live.pop(proc.pid, None)
        await asyncio.to_thread(shutil.rmtree, b.path, True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(remove_leases_for, lease_file, mac)


async def run_baseline(t: Template, work: Path, runs: int, boot_delay: float, allow_copy: bool,
                       console: Console) -> list[Baseline]:
    work.mkdir(parents=True, exist_ok=True)
    live: dict[int, asyncio.subprocess.Process] = {}
    out = []
    try:
        for i in range(runs):
            r = await baseline_once(t, work, i + 1, boot_delay, allow_copy, live)
            out.append(r)
            console.print(f"  baseline-{i + 1}: " + (f"[red]{r.error}[/]" if r.error else
                                                     f"{r.attempts} attempts, lag {ms(r.lag)} ms"))
    finally:
        for proc in list(live.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return out


# -- 3. clone micro-benchmark --------------------------------------------------------------------


@dataclass
class CloneBench:
    label: str
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    note: str = ""


def _time_clones(src: Path, dst_dir: Path, reps: int, allow_copy: bool) -> list[float]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CloneCopyWarning)
        for i in range(reps):
            dst = dst_dir / f"clone-{i}.img"
            t0 = time.perf_counter()
            method = clone_file(src, dst, allow_copy=allow_copy)
            out.append(time.perf_counter() - t0)
            os.unlink(dst)
            if not allow_copy:
                assert method == "clone", method
    return out


def run_clone_bench(template: Template, work: Path, reps: int, copy_reps: int, reflink: bool) -> list[CloneBench]:
    """clone_file of the template disk (and of a disk holding data) vs a sparse full copy of it."""
    # a directory that cannot reflink for the copy baseline: the full copy the seed fell back to
    copy_dir = Path(tempfile.mkdtemp(prefix="shoes-vz-bench-copy-", dir="/var/tmp"))
    clone_log = logging.getLogger("shoes_vz.vm.clone")
    level = clone_log.level
    clone_log.setLevel(logging.ERROR)  # allow_copy warns on every copy: that is the point here
    try:
        work.mkdir(parents=True, exist_ok=True)
        data_src = work / "data-disk.img"
        with open(data_src, "wb") as f:  # a 64 GiB sparse disk with DATA_BYTES written (an "installed OS")
            f.truncate(template.meta.disk_bytes)
            chunk = os.urandom(8 << 20)
            for off in range(0, DATA_BYTES, len(chunk)):
                f.seek(off * 16)  # spread out: several extents, as a real image has
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        rows = []
        for label, src, n_copy in (
            (f"clone_file Disk.img ({template.meta.disk_bytes >> 30} GiB sparse, empty)", template.disk, reps),
            (f"clone_file {template.meta.disk_bytes >> 30} GiB sparse + {DATA_BYTES >> 20} MiB data",
             data_src, copy_reps),
        ):
            cb = CloneBench(label)
            if reflink:
                cb.ours = _time_clones(src, work / "clones", reps, allow_copy=False)
            else:
                cb.note = "no reflink here"
            cb.base = _time_clones(src, copy_dir, n_copy, allow_copy=True)
            rows.append(cb)
        return rows
    finally:
        clone_log.setLevel(level)
        shutil.rmtree(copy_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(work / "data-disk.img")


# -- report ----------------------------------------------------------------------------------------


def shell_startup(user: str, reps: int = 5) -> tuple[str, list[float]]:
    """How long the guest user's login shell takes to run `true` under the sim guest's sshd.

    sshd runs every command as `$SHELL -c CMD` with SSH_CLIENT set; bash then sources ~/.bashrc
    (Debian's SSH_SOURCE_BASHRC), so a heavy rc file would be paid on every probe — the sim's sshd
    points HOME at the guest's own home for that reason, and so does this measurement.
    """
    import pwd

    try:
        shell = pwd.getpwnam(user).pw_shell or "/bin/sh"
    except KeyError:
        shell = "/bin/bash"  # not a host user: a namespaced sim guest's, whose own /etc/passwd says bash
    out = []
    with tempfile.TemporaryDirectory() as home:  # the sim guest's sshd sets HOME to its own (empty) home
        env = {**os.environ, "SSH_CLIENT": "127.0.0.1 40000 2222", "SHLVL": "0", "HOME": home}
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run([shell, "-c", "true"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           check=False)
            out.append(time.perf_counter() - t0)
    return shell, out


def report(console: Console, ours: list[Ours], base: list[Baseline], clones: list[CloneBench],
           boot_delay: float, shell: str, shell_times: list[float]) -> None:
    per = Table(title=f"{len(ours)} sequential sim runners (boot delay {boot_delay:g} s)")
    for col in ("runner", "clone ms", "boot→ssh ms", "total ms", "VM start→sshd listening ms",
                "detection lag ms", "error"):
        per.add_column(col, justify="left" if col in ("runner", "error") else "right")
    for o in ours:
        t = o.result.timings
        per.add_row(o.result.name, ms(t.get("clone")), ms(t.get("boot_to_ssh")), ms(t.get("total")),
                    ms(o.boot), ms(o.lag), o.result.error[:50])
    console.print(per)

    phases = Table(title="startup phases, ours (nearest-rank)")
    for col in ("phase", "n", "P50 ms", "P95 ms"):
        phases.add_column(col, justify="left" if col == "phase" else "right")
    for ph in ("clone", "boot_to_ssh", "total"):
        vals = [o.result.timings[ph] for o in ours if ph in o.result.timings]
        a, b = p50_p95(vals)
        phases.add_row(ph, str(len(vals)), ms(a), ms(b))
    lags = [o.lag for o in ours if o.lag is not None]
    a, b = p50_p95(lags)
    phases.add_row("ssh-ready detection lag", str(len(lags)), ms(a), ms(b))
    console.print(phases)

    cmp = Table(title="ours vs baseline (same run; ratio = baseline P95 / ours P95)")
    for col in ("figure", "ours P50", "ours P95", "baseline P50", "baseline P95", "n ours/base",
                "ratio", "target", "met"):
        cmp.add_column(col, justify="left" if col in ("figure", "target", "met") else "right")

    def row(label: str, mine: list[float], theirs: list[float], target: float | None, unit: str = "ms",
            note: str = "") -> None:
        m50, m95 = p50_p95(mine)
        b50, b95 = p50_p95(theirs)
        ratio = f"{b95 / m95:.1f}×" if m95 and b95 else "-"
        if target is None:
            tgt, met = "", ""
        else:
            tgt = f"P95 ≤ {target * 1000:g} {unit}"
            met = "-" if m95 is None else ("[green]met[/]" if m95 <= target else "[red]not met[/]")
        cmp.add_row(label + (f" ({note})" if note else ""), ms(m50), ms(m95), ms(b50), ms(b95),
                    f"{len(mine)}/{len(theirs)}", ratio, tgt, met)

    row("SSH-ready detection lag, ms (sshd listening → SSH ok)", lags,
        [r.lag for r in base if r.lag is not None], LAG_TARGET)
    row("boot_to_ssh, ms (VM started → SSH ok)",
        [o.result.timings["boot_to_ssh"] for o in ours if "boot_to_ssh" in o.result.timings],
        [r.boot_to_ssh for r in base if r.boot_to_ssh is not None], None)
    row("clone phase of a runner, ms (agent: bundle built)",
        [o.result.timings["clone"] for o in ours if "clone" in o.result.timings], [], CLONE_TARGET)
    for cb in clones:
        row(cb.label + ", ms; baseline = sparse full copy", cb.ours, cb.base, CLONE_TARGET, note=cb.note)
    console.print(cmp)

    floors = Table(title="SSH handshake floor, guest already up (what any probe pays; from the baseline guests)")
    for col in ("probe", "n", "P50 ms", "P95 ms"):
        floors.add_column(col, justify="left" if col == "probe" else "right")
    for label, vals in (
        ("ssh CLI `true` (seed's command)", [r.ssh_floor for r in base if r.ssh_floor is not None]),
        ("agent's asyncssh wait_ready (connect + `true`)", [v for r in base for v in r.asyncssh_floor]),
        (f"of which: guest user's shell `{shell} -c true` as sshd runs it (SSH_CLIENT set)", shell_times),
    ):
        a, b = p50_p95(vals)
        floors.add_row(label, str(len(vals)), ms(a), ms(b))
    console.print(floors)


# -- main ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_root(console: Console) -> Iterator[tuple[Path, str]]:
    reason = xfs_unavailable()
    if reason is None:
        with xfs_reflink_mount(size_gib=4) as mnt:
            yield mnt, f"XFS reflink loop mount {mnt}"
        return
    root = Path(tempfile.mkdtemp(prefix="shoes-vz-bench-"))
    console.print(f"[yellow]warning:[/] no XFS reflink mount ({reason}); running in {root} "
                  f"({filesystem_type(root)}): clone figures are not representative")
    try:
        yield root, f"temp dir {root} ({filesystem_type(root)})"
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def amain(args: argparse.Namespace, root: Path, where: str, console: Console) -> int:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    stack = LocalStack(root / "stack", max_runners=2, boot_delay=args.boot_delay)
    ours: list[Ours] = []
    base: list[Baseline] = []
    clones: list[CloneBench] = []
    leftovers: list[str] = []
    template: Template | None = None
    try:
        with console.status("starting server and sim agent…"):
            await stack.start()
        reflink = stack.reflink
        console.print(f"state on {where}; reflink: {reflink}; server {stack.server_addr}")
        console.print(f"[bold]1. {args.runners} sequential sim runners through the plugin and ShoesService[/]")
        ours = await run_ours(stack, args.runners, console)
        template = TemplateStore(stack.root / "templates").get(TEMPLATE)
        console.print(f"[bold]2. baseline: seed's 1 s `ssh … true` poll loop, {args.baseline_runs} sim guests[/]")
        base = await run_baseline(template, root / "baseline", args.baseline_runs, args.boot_delay,
                                  allow_copy=not reflink, console=console)
        console.print(f"[bold]3. clone micro-benchmark ({args.clone_reps}×)[/]")
        clones = await asyncio.to_thread(run_clone_bench, template, root / "clonebench", args.clone_reps,
                                         args.copy_reps, reflink)
    finally:
        with console.status("stopping…"):
            await stack.stop()
        leftovers = stack.leftovers()
    shell, shell_times = shell_startup(template.meta.ssh_user if template else "root")
    report(console, ours, base, clones, args.boot_delay, shell, shell_times)
    if leftovers:
        console.print(f"[red]left behind:[/] {leftovers}")
    failed = [o.result.name for o in ours if o.result.error] + [f"baseline-{i + 1}"
                                                                  for i, r in enumerate(base) if r.error]
    if failed:
        console.print(f"[red]failed:[/] {failed}")
    return 1 if failed or leftovers else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--runners", type=int, default=20, help="sequential sim runners through the stack")
    p.add_argument("--boot-delay", type=float, default=0.5, help="sim boot delay, seconds")
    p.add_argument("--baseline-runs", type=int, default=10, help="sim guests probed with the seed's loop")
    p.add_argument("--clone-reps", type=int, default=20, help="clone_file repetitions per row")
    p.add_argument("--copy-reps", type=int, default=5, help="full copies of the disk holding data")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        with bench_root(console) as (root, where):
            code = asyncio.run(amain(args, root, where, console))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: everything stopped and removed")
        return 130
    except asyncio.CancelledError:
        console.print("[yellow]terminated[/]: everything stopped and removed")
        return 143
    return code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
