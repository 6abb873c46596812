"""`shoes-vz agents`, `runners`, `drain`, `undrain`, `delete`: the fleet, from the server's AdminService.

They reach the server as `[admin]` says (server_addr, token, tls_ca; `SHOESVZ_ADMIN_*`; flags on
top). Reading takes the operator or the viewer token, changing anything the operator token.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict
from rich.console import RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from shoes_vz.cli.console import fail, out
from shoes_vz.cli.options import ConfigOpt
from shoes_vz.core.errors import ShoesVzError
from shoes_vz.core.timings import ago

ServerOpt = Annotated[str | None, typer.Option("--server", help="the server's gRPC HOST:PORT (admin.server_addr)")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", help="operator_token or viewer_token (admin.token; better: SHOESVZ_ADMIN_TOKEN)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of a table")]
WatchOpt = Annotated[float | None, typer.Option(
    "--watch", "-w", help="refresh every SECONDS until Ctrl-C", metavar="SECONDS", min=0.2)]


def _client(config: Path | None, server: str | None, token: str | None) -> Any:
    from shoes_vz import config as cfg
    from shoes_vz.cli.admin_client import AdminClient

    return AdminClient(cfg.load(cfg.AdminSettings, config, server_addr=server, token=token))


def _json(messages: list[Any]) -> str:
    return json.dumps([MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
                       for m in messages], indent=2)


def _s(value: float) -> str:
    return f"{value:.2f}" if value > 0 else "-"


def _t(text: str) -> str:
    return escape(text)  # names, errors and template names come from outside: never markup


def _condition(c: Any) -> str:
    if c.reason == "drained":
        return "drained since " + time.strftime("%Y-%m-%d %H:%M", time.localtime(c.since.ToNanoseconds() / 1e9))
    return f"{c.reason}: {c.message}"


def agents_table(agents: list[Any], now: float) -> Table:
    table = Table("agent", "host", "driver", "version", "status", "placement", "runners", "templates (warm free/all)",
                  "last seen", title=f"{len(agents)} agents, {sum(a.online for a in agents)} online")
    for a in agents:
        placement = "; ".join(_condition(c) for c in a.conditions) or "ok"
        templates = ", ".join(f"{t.name} {t.version} {t.digest[:12]} ({t.free_warm_slots}/{t.warm_slots})"
                              for t in a.templates) or "-"
        table.add_row(_t(a.agent_id), _t(a.hostname), _t(a.driver), _t(a.agent_version),
                      "online" if a.online else "[red]offline[/]", _t(placement) if a.conditions else "ok",
                      f"{a.running_runners}/{a.max_runners}", _t(templates),
                      ago(now - a.last_seen.ToNanoseconds() / 1e9) + " ago")
    return table


def runners_table(runners: list[Any]) -> Table:
    table = Table("runner", "name", "agent", "template", "type", "state", "guest", "address", "age", "clone s",
                  "boot→ssh s", "total s", "error / reap reason", title=f"{len(runners)} runners")
    for r in runners:
        state = r.state + (" (deleting)" if r.delete_requested and r.state != "gone" else "")
        why = r.reap_reason or r.error
        table.add_row(r.runner_id, _t(r.runner_name), _t(r.agent_id), _t(r.template), r.resource_type, state,
                      r.guest_state, r.ip_address or "-", ago(r.age_seconds), _s(r.timings.clone_seconds),
                      _s(r.timings.boot_to_ssh_seconds), _s(r.timings.total_seconds),
                      _t(why[:80] + ("…" if len(why) > 80 else "")))
    return table


def _show(fetch: Callable[[], list[Any]], render: Callable[[list[Any]], RenderableType], as_json: bool,
          watch: float | None) -> None:
    if watch is None:
        items = fetch()
        if as_json:
            out.print(_json(items), markup=False, highlight=False, soft_wrap=True)
        else:
            out.print(render(items))
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a watch: not an error
        _watch(fetch, render, as_json, watch)


def _watch(fetch: Callable[[], list[Any]], render: Callable[[list[Any]], RenderableType], as_json: bool,
           every: float) -> None:
    if as_json or not out.is_terminal:  # piped: one document (JSON on one line) per refresh, for jq and logs
        while True:
            items = fetch()
            if as_json:
                out.print(json.dumps(json.loads(_json(items))), markup=False, highlight=False, soft_wrap=True)
            else:
                out.print(f"-- {time.strftime('%H:%M:%S')}", markup=False, highlight=False)
                out.print(render(items))
            time.sleep(every)
    with Live(render(fetch()), console=out, auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(every)
            live.update(render(fetch()), refresh=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def agents(config: ConfigOpt = None, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
               watch: WatchOpt = None) -> None:
        """The fleet's agents: status, drain and other conditions, capacity, templates, warm slots."""
        try:
            with _client(config, server, token) as c:
                _show(c.agents, lambda items: agents_table(items, time.time()), as_json, watch)
        except ShoesVzError as e:
            raise fail(e) from None

    @app.command()
    def runners(config: ConfigOpt = None, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
                watch: WatchOpt = None,
                all_: Annotated[bool, typer.Option(
                    "--all", "-a", help="also runners already gone (the newest 100 of those server.history_keep keeps)")
                ] = False,
                agent: Annotated[str, typer.Option(help="only this agent's runners")] = "") -> None:
        """The fleet's runners: agent, template, state, guest state, address, age, startup timings, errors."""
        try:
            with _client(config, server, token) as c:
                _show(lambda: c.runners(include_gone=all_, agent_id=agent), runners_table, as_json, watch)
        except ShoesVzError as e:
            raise fail(e) from None

    def _drain(agent_id: str, drained: bool, config: Path | None, server: str | None, token: str | None) -> None:
        try:
            with _client(config, server, token) as c:
                reply = c.drain(agent_id) if drained else c.undrain(agent_id)
        except ShoesVzError as e:
            raise fail(e) from None
        a = reply.agent
        if drained:
            did = "drained" if reply.changed else "was drained already"
            after = f"{a.running_runners} running runner(s) finish; no new placements until `shoes-vz undrain`"
        else:
            did = "undrained" if reply.changed else "was not drained"
            others = [c for c in a.conditions if c.reason != "drained"]
            after = "placements resume" if not others else "still out of placement: " + "; ".join(
                f"{c.reason}: {c.message}" for c in others)
        out.print(f"agent {a.agent_id} ({a.hostname}) {did}: {after}", markup=False, highlight=False)

    @app.command()
    def drain(agent_id: Annotated[str, typer.Argument(metavar="AGENT", help="the agent id (`shoes-vz agents`)")],
              config: ConfigOpt = None, server: ServerOpt = None, token: TokenOpt = None) -> None:
        """Take an agent out of placement: its running jobs finish, it gets no new runners (kept across restarts)."""
        _drain(agent_id, True, config, server, token)

    @app.command()
    def undrain(agent_id: Annotated[str, typer.Argument(metavar="AGENT", help="the agent id (`shoes-vz agents`)")],
                config: ConfigOpt = None, server: ServerOpt = None, token: TokenOpt = None) -> None:
        """Put a drained agent back into placement."""
        _drain(agent_id, False, config, server, token)

    @app.command()
    def delete(runner: Annotated[str, typer.Argument(metavar="RUNNER", help="runner id, cloud id or runner name")],
               config: ConfigOpt = None, server: ServerOpt = None, token: TokenOpt = None) -> None:
        """Tear a runner down, as myshoes' DeleteInstance would: durable, carried out when an offline agent
        returns; myshoes' own delete of it then answers NOT_FOUND (done)."""
        try:
            with _client(config, server, token) as c:
                r = c.delete(runner)
        except ShoesVzError as e:
            raise fail(e) from None
        out.print(f"runner {r.runner_id} ({r.runner_name}) on agent {r.agent_id}: delete requested (was {r.state})",
                  markup=False, highlight=False)


__all__ = ["agents_table", "register", "runners_table"]
