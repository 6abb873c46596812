"""`shoes-vz up` / `make run`: the whole fast path on this machine, with a timing table.

Server + one sim agent come up on loopback in a temp dir; N runners are created through
ShoesService with a setup_script that imitates the actions runner, seen reaching IDLE in the
guest, deleted; clone / boot_to_ssh / total P50 and P95 are printed; nothing is left behind.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoes_vz.core.errors import ConfigError, Interrupted
from shoes_vz.core.timings import percentile
from shoes_vz.plugin.host import PluginProcess, PluginStartError, host_env
from shoes_vz.plugin.install import install_plugin
from shoes_vz.stack import LocalStack, prerequisites
from shoes_vz.wire import myshoes_pb2 as mpb

# What myshoes' setup script ends in: config.sh writes .runner, run.sh keeps Runner.Listener up
# and logs "Listening for Jobs". This imitation does the same visible things, in seconds, where
# myshoes' script does them: $RUNNER_BASE_DIRECTORY/runner, /tmp/runner (a loopback sim guest,
# which shares the host's /tmp, uses its own home instead).
FAKE_RUNNER_SCRIPT = """#!/bin/sh
set -e
mkdir -p "${SHOESVZ_GUEST_HOME:-/tmp}/runner"
cd "${SHOESVZ_GUEST_HOME:-/tmp}/runner"
printf '{"agentId": %d, "agentName": "%s", "poolId": 1}\\n' "$$" "__NAME__" > .runner
mkdir -p _diag
log="_diag/Runner_$(date -u +%Y%m%d-%H%M%S)-utc.log"
bash -c 'exec -a Runner.Listener sleep 86400' &
echo "[$(date -u '+%Y-%m-%d %H:%M:%SZ') INFO Runner] Listening for Jobs" >> "$log"
wait
"""


def fake_runner_script(name: str) -> str:
    return FAKE_RUNNER_SCRIPT.replace("__NAME__", name)


@dataclass
class RunResult:
    name: str
    cloud_id: str = ""
    ip: str = ""
    add_seconds: float = 0.0
    idle_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    plugin_handshake: list[float] = field(default_factory=list)
    plugin_kill: list[float] = field(default_factory=list)
    error: str = ""


class PluginCaller:
    """Calls ShoesService the way myshoes does: a fresh plugin process per call, then Kill()."""

    def __init__(self, plugin: Path, server_addr: str, token: str) -> None:
        self.plugin = plugin
        self.env = host_env({"SHOESVZ_SERVER_ADDR": server_addr, "SHOESVZ_TOKEN": token})
        self._live: dict[int, PluginProcess] = {}  # by id(): the dataclass is not hashable

    def _call(self, method: str, request: object, timeout: float, res: RunResult) -> object:
        with PluginProcess.launch(self.plugin, self.env, stderr=subprocess.DEVNULL) as proc:
            self._live[id(proc)] = proc
            res.plugin_handshake.append(proc.handshake_s)
            try:
                return getattr(proc.shoes(), method)(request, timeout=timeout)
            finally:
                self._live.pop(id(proc), None)
                res.plugin_kill.append(proc.kill())

    def kill_all(self) -> None:
        """End the calls in flight (an interrupted run): as myshoes' SIGKILL after a call."""
        for proc in list(self._live.values()):
            proc.proc.kill()

    async def call(self, method: str, request: object, timeout: float, res: RunResult) -> object:
        return await asyncio.to_thread(self._call, method, request, timeout, res)


async def drive_runner(stack: LocalStack, caller: PluginCaller, name: str) -> RunResult:
    res = RunResult(name)
    t0 = time.monotonic()
    try:
        reply: mpb.AddInstanceResponse = await caller.call("AddInstance", mpb.AddInstanceRequest(
            runner_name=name, setup_script=fake_runner_script(name), resource_type=mpb.Small,
            labels=["self-hosted", "macOS", "sim"]), 120, res)  # type: ignore[assignment]
    except grpc.RpcError as e:
        res.error = f"AddInstance: {e.code().name}: {e.details()}"  # type: ignore[attr-defined]
        return res
    except PluginStartError as e:
        res.error = f"plugin: {e}"
        return res
    res.add_seconds = time.monotonic() - t0
    res.cloud_id, res.ip = reply.cloud_id, reply.ip_address
    runner_id = reply.cloud_id.removeprefix("shoes-vz-")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = _runner(stack.runner_state(), runner_id)
        if r and r.get("guest_runner_state") == "idle":
            res.idle_seconds = time.monotonic() - t0
            res.timings = {k: v for k, v in r.get("timings", {}).items() if v is not None}
            break
        await asyncio.sleep(0.05)
    else:
        res.error = "guest runner never reported IDLE"
    try:
        await caller.call("DeleteInstance", mpb.DeleteInstanceRequest(cloud_id=reply.cloud_id), 30, res)
    except grpc.RpcError as e:
        res.error = res.error or f"DeleteInstance: {e.code().name}: {e.details()}"  # type: ignore[attr-defined]
    while _runner(stack.runner_state(), runner_id) and time.monotonic() < deadline + 30:
        await asyncio.sleep(0.05)
    return res


def _runner(state: dict[str, Any], runner_id: str) -> dict[str, Any] | None:
    return next((r for r in state.get("runners", []) if r.get("runner_id") == runner_id), None)


def report(results: list[RunResult], console: Console, title: str) -> None:
    table = Table(title=title)
    for col in ("runner", "ip", "clone ms", "boot→ssh ms", "total ms", "AddInstance ms", "→ IDLE ms", "error"):
        table.add_column(col, justify="left" if col in ("runner", "ip", "error") else "right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    for r in results:
        table.add_row(r.name, r.ip, ms(r.timings.get("clone")), ms(r.timings.get("boot_to_ssh")),
                      ms(r.timings.get("total")), ms(r.add_seconds or None), ms(r.idle_seconds or None),
                      r.error[:60])
    console.print(table)
    summary = Table(title="startup phases (nearest-rank)")
    for col in ("phase", "n", "P50 ms", "P95 ms"):
        summary.add_column(col, justify="left" if col == "phase" else "right")
    for phase in ("clone", "boot_to_ssh", "total"):
        vals = [r.timings[phase] for r in results if phase in r.timings]
        summary.add_row(phase, str(len(vals)), ms(percentile(vals, 50)), ms(percentile(vals, 95)))
    for label, attr in (("plugin spawn→handshake", "plugin_handshake"), ("plugin Kill()", "plugin_kill")):
        vals = [v for r in results for v in getattr(r, attr)]
        if vals:
            summary.add_row(label, str(len(vals)), ms(percentile(vals, 50)), ms(percentile(vals, 95)))
    console.print(summary)


async def run_demo(*, runners: int, concurrency: int, boot_delay: float, keep: bool, console: Console) -> int:
    """Drive `runners` runners through a local stack; the exit code. Interrupted (Ctrl-C, SIGTERM)
    once everything is cleaned up; the state directory stays when asked (`keep`) or when something failed."""
    problems = await asyncio.to_thread(prerequisites)
    if problems:
        raise ConfigError("`shoes-vz up` cannot run here: " + "; ".join(problems))
    root = Path(tempfile.mkdtemp(prefix="shoes-vz-up-"))
    stack = LocalStack(root, max_runners=concurrency, boot_delay=boot_delay, keep_evidence=keep)
    results: list[RunResult] = []
    leftovers: list[str] = []
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    signals: list[int] = []

    def interrupt(signum: int) -> None:
        signals.append(signum)
        main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, interrupt, sig)  # an interrupted demo still cleans up
    failed = False
    caller: PluginCaller | None = None
    try:
        with console.status("starting server and sim agent…"):
            await stack.start()
        console.print(f"server {stack.server_addr}, one sim agent, state in {root}")
        console.print(await stack.describe_driver(), markup=False)
        if not stack.reflink:
            console.print(f"[yellow]warning:[/] {root} cannot reflink: bundles are full (sparse) copies; "
                          "clone timings are not representative (use XFS reflink, btrfs or APFS)")
        plugin = await asyncio.to_thread(install_plugin, root / "shoes-vz-plugin")
        console.print(f"myshoes plugin installed at {plugin}; one plugin process per call, as myshoes does")
        caller = PluginCaller(plugin, stack.server_addr, stack.token)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> RunResult:
            async with sem:
                r = await drive_runner(stack, caller, f"demo-runner-{i + 1}")
                console.print(f"  {r.name}: " + (f"[red]{escape(r.error)}[/]" if r.error else
                                                  f"ready at {r.ip}, IDLE, deleted"))
                return r

        with console.status(f"driving {runners} runners ({concurrency} at a time) through the plugin…"):
            results = list(await asyncio.gather(*(one(i) for i in range(runners))))
    except asyncio.CancelledError:
        if not signals:
            raise
        main.uncancel()
    except BaseException:
        failed = True
        raise
    finally:
        if caller is not None:
            caller.kill_all()
        await stack.stop()
        leftovers = await asyncio.to_thread(stack.leftovers)
        if signals:  # the bundles of runners cut short go with the state directory; processes must not stay
            leftovers = [x for x in leftovers if not x.startswith("/")]
        failed = failed or bool(leftovers) or any(r.error for r in results)
        if not keep and not failed:
            shutil.rmtree(root, ignore_errors=True)
    kept = f"; state kept in {root}" if keep or failed else ""
    if signals:
        raise Interrupted(f"{signal.Signals(signals[0]).name}: stopped the server, the agent and their VMs"
                          + (f"; left behind: {', '.join(leftovers)}" if leftovers else ", nothing left behind")
                          + kept)
    report(results, console, f"{runners} sim runners through the myshoes plugin → ShoesService")
    if leftovers:
        console.print(f"[red]left behind:[/] {leftovers}")
    else:
        console.print("clean exit: no VM process, bundle or sim network link left behind")
    if keep or failed:
        console.print(f"state kept in {root} (logs, and each runner's evidence in {root / 'agent' / 'evidence'})")
    return 1 if failed else 0
