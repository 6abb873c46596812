"""The `shoes-vz` command. Each command parses, makes one call and prints."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shoes_vz import __version__
from shoes_vz.cli import console, fleet, runner_host, template_create, template_warm
from shoes_vz.cli import template as template_cli
from shoes_vz.cli.console import fail, out
from shoes_vz.cli.options import ConfigOpt, DriverOpt, RunnersDirOpt, TemplatesDirOpt, VerboseOpt, agent_settings
from shoes_vz.core.errors import ShoesVzError

app = typer.Typer(help="Ephemeral macOS VMs on Apple Silicon as GitHub Actions runners for myshoes.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
vm_app = typer.Typer(help="The per-VM process (started by the agent).", no_args_is_help=True)
template_app = typer.Typer(help="Golden templates.", no_args_is_help=True)
server_app = typer.Typer(help="Run the server; `forget-agent` releases an agent id for enrolment.")
app.add_typer(server_app, name="server")
app.add_typer(vm_app, name="vm")
app.add_typer(template_app, name="template")
for _part in (template_cli, template_create, template_warm):
    _part.register(template_app)
fleet.register(app)  # agents, runners, drain, undrain, delete
runner_host.register(app)  # ssh, logs (on the agent host)

def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


async def _serve_until_signal(obj: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with obj:
        await stop.wait()


def _print_version(value: bool) -> None:
    if value:
        out.print(f"shoes-vz {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="print the version and exit")] = False,
    debug: Annotated[bool, typer.Option("--debug", help=f"show an error's traceback (also {console.DEBUG_ENV}=1)")
                     ] = False,
) -> None:
    """Ephemeral macOS VMs on Apple Silicon as GitHub Actions runners for myshoes."""
    if debug:
        os.environ[console.DEBUG_ENV] = "1"  # processes this one starts (`up`: server, agent) inherit it


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@server_app.callback(invoke_without_command=True)
def server(
    ctx: typer.Context,
    config: ConfigOpt = None,
    listen: Annotated[str | None, typer.Option(help="gRPC HOST:PORT (server.listen)")] = None,
    metrics_listen: Annotated[str | None, typer.Option(
        help="/metrics HOST:PORT, '' disables (server.metrics_listen)")] = None,
    db: Annotated[Path | None, typer.Option(help="SQLite database path (server.db_path)")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the server: ShoesService for myshoes, AgentService for agents, /metrics."""
    from shoes_vz import config as cfg
    from shoes_vz.server.app import ServerApp

    if ctx.invoked_subcommand is not None:
        return
    _logging(verbose)
    try:
        settings = cfg.load(cfg.ServerSettings, config, listen=listen, metrics_listen=metrics_listen, db_path=db)
        asyncio.run(_serve_until_signal(ServerApp(settings)))
    except ShoesVzError as e:
        raise fail(e) from None


@server_app.command("forget-agent")
def forget_agent(
    agent_id: Annotated[str, typer.Argument(help="the agent id to release (the server's log and /metrics name it)")],
    config: ConfigOpt = None,
    db: Annotated[Path | None, typer.Option(help="SQLite database path (server.db_path)")] = None,
) -> None:
    """Drop an agent's enrolment so that its id may enrol again (with the server stopped).

    For a host that lost its secret (<agent.state_dir>/agent-secret) or was rebuilt under the same
    id: its next connection enrols anew. Its runners and history stay in the database.
    """
    from shoes_vz import config as cfg
    from shoes_vz.server.enrollment import forget_offline

    try:
        settings = cfg.load(cfg.ServerSettings, config, db_path=db)
        out.print(forget_offline(settings.db_path, agent_id), markup=False, highlight=False)
    except ShoesVzError as e:
        raise fail(e) from None


@app.command()
def agent(
    config: ConfigOpt = None,
    server_addr: Annotated[str | None, typer.Option(help="the server's gRPC HOST:PORT (agent.server_addr)")] = None,
    driver: DriverOpt = None,
    templates_dir: TemplatesDirOpt = None,
    runners_dir: RunnersDirOpt = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="agent id, lock, SSH keys and failed runners' evidence (agent.state_dir)")] = None,
    max_runners: Annotated[int | None, typer.Option(help="VMs at once (agent.max_runners)")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the agent on this host: clones, boots and tears down runners."""
    from shoes_vz.agent.app import Agent

    _logging(verbose)
    try:
        settings = agent_settings(config, server_addr=server_addr, driver=driver, templates_dir=templates_dir,
                                  runners_dir=runners_dir, state_dir=state_dir, max_runners=max_runners)
        asyncio.run(_serve_until_signal(_KeepVMs(Agent(settings))))
    except ShoesVzError as e:
        raise fail(e) from None


class _KeepVMs:
    """The daemon's exit leaves VMs running: a restarted agent takes them back."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    async def __aenter__(self) -> Any:
        await self.agent.start()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        await self.agent.stop(tear_down=False)


@vm_app.command("run", context_settings={"allow_extra_args": True})
def vm_run(
    bundle: Annotated[Path, typer.Argument(help="the runner bundle directory (<runners_dir>/<id>.bundle)")],
    config: ConfigOpt = None,
    driver: DriverOpt = None,
    boot_delay: Annotated[float | None, typer.Option(
        help="sim: seconds the guest takes to boot (default: agent.sim_boot_delay)")] = None,
    lease_file: Annotated[Path | None, typer.Option(
        help="DHCP lease file (sim: written; default: agent.lease_file)")] = None,
    stop_grace: Annotated[float | None, typer.Option(
        help="seconds from stop request to hard stop (default: agent.stop_grace)")] = None,
) -> None:
    """Own one VM until it stops (holds the bundle lock, serves BUNDLE/control.sock)."""
    import json

    from shoes_vz.vm import process

    s = agent_settings(config, driver=driver, sim_boot_delay=boot_delay, lease_file=lease_file,
                       stop_grace=stop_grace)
    process.exit_now(process.main([  # os._exit after flushing: dispatch threads may still call back
        str(bundle), "--driver", s.driver, "--boot-delay", str(s.sim_boot_delay), "--stop-grace", str(s.stop_grace),
        "--lease-file", str(s.lease_file), "--host-slots", str(s.effective_vm_slots_dir()),
        "--host-limit", str(s.host_vm_limit), "--restore-timeout", str(s.restore_timeout),
        "--live-timeout", str(s.restore_live_timeout), "--driver-options", json.dumps(s.driver_options)]))


# --help goes to the runner-agent's own parser too (it lists the daemon's flags, `install --help` its own)
@app.command("runner-agent", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                              "help_option_names": []})
def runner_agent(ctx: typer.Context) -> None:
    """The in-guest runner-agent (same as `shoes-vz-runner-agent`); `install` sets it up in a macOS guest."""
    from shoes_vz.guest import runner_agent as ra

    raise typer.Exit(ra.main(list(ctx.args)) or 0)


@app.command()
def up(
    runners: Annotated[int, typer.Option("--runners", "-n", help="runners to drive through the lifecycle")] = 3,
    concurrency: Annotated[int, typer.Option(help="runners at once (agent capacity)")] = 2,
    boot_delay: Annotated[float, typer.Option(help="sim guest boot time, seconds")] = 0.0,
    keep: Annotated[bool, typer.Option(
        help="keep the state dir: logs, and every runner's evidence (kept anyway when something fails)")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Bring up server + one sim agent on loopback, drive runners through their lifecycle, report."""
    from shoes_vz.demo import run_demo

    if verbose:
        _logging(True)
    # errors and Ctrl-C (after cleaning up: Interrupted) leave as one line through console.run
    raise typer.Exit(asyncio.run(run_demo(runners=runners, concurrency=concurrency, boot_delay=boot_delay,
                                          keep=keep, console=out)))


@app.command()
def status(
    config: ConfigOpt = None,
    state_file: Annotated[Path | None, typer.Option(
        help="the agent's runner-state.json (default: agent.runner_state_file)")] = None,
) -> None:
    """Show this host's runners (from the agent's runner-state.json)."""
    import json

    from rich.table import Table

    state_file = agent_settings(config, runner_state_file=state_file).runner_state_file
    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        raise fail(ShoesVzError(f"cannot read {state_file}: {e}")) from None
    table = Table("runner", "name", "state", "guest", "ip", "start", "clone s", "boot→ssh s", "total s", "error",
                  title=f"agent {data.get('agent_id', '?')} ({data.get('driver', '?')}, "
                        f"{len(data.get('runners', []))}/{data.get('max_runners', '?')} slots)")
    for r in data.get("runners", []):
        t = r.get("timings", {})
        table.add_row(r["runner_id"], r["runner_name"], r["state"], r.get("guest_runner_state", ""),
                      r.get("ip_address", ""), _start_kind(r), *(f"{t[k]:.3f}" if t.get(k) is not None else "-"
                                                  for k in ("clone", "boot_to_ssh", "total")),
                      r.get("error", "")[:60])
    out.print(table)
    for r in data.get("runners", []):  # in full: an error names the kept VM log, a path to copy
        if r.get("error"):
            out.print(f"{r['runner_id']}: {r['error']}", markup=False, highlight=False)
    for c in data.get("conditions", []):  # why this host takes no runners now (with the fix)
        out.print(f"out of placement: {c['reason']}: {c['message']}", markup=False, highlight=False)


def _start_kind(runner: dict[str, Any]) -> str:
    """cold, warm (restored from a slot) or cold* (a slot's restore failed: cold boot instead)."""
    if not runner.get("warm_slot"):
        return "cold"
    restored = runner.get("restored")
    if restored is True:
        return "warm"
    return "cold*" if restored is False or runner.get("ip_address") else "…"


# commands contributed by optional packages (vz/doctor on macOS, the myshoes plugin)
for _mod in ("shoes_vz.cli.macos", "shoes_vz.cli.plugin"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_mod).register(app)


def main(argv: list[str] | None = None) -> None:
    sys.exit(console.run(app, argv))


if __name__ == "__main__":
    main()
