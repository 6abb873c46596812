"""`StatusPage`: the server's read-only web page of the fleet (server-rendered HTML, a meta refresh).

Agents with capacity and drain/other conditions, runners by state with their ages, recent failures
with their reasons, startup P50/P95 per phase and template, warm-slot use. Every figure comes from
server/fleet.py, the queries AdminService answers with. Everything shown is escaped: runner names,
errors and template names come from outside.

On loopback (the default, `server.status_listen`) the page is open; anywhere else it takes the viewer
or operator token, as `Authorization: Bearer <token>` or as the password of HTTP Basic (a browser's
prompt; any user name), and the server refuses to start there without one of those tokens.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import ssl
import time
from collections.abc import Iterable
from html import escape

from aiohttp import web

from shoes_vz.core.states import Phase
from shoes_vz.core.timings import ago
from shoes_vz.server.fleet import AgentView, Fleet, StartupStat, Summary
from shoes_vz.server.store import RunnerRow, Store

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5
STATE_ORDER = [p.value for p in (Phase.CREATING, Phase.BOOTING, Phase.SSH_READY, Phase.RUNNING,
                                 Phase.TEARING_DOWN, Phase.ERROR)]
CSS = """
body{font:14px/1.4 -apple-system,system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40%}th,td{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f0f0f0}.muted{color:#777}.bad{color:#b00}.warn{color:#a60}
.ok{color:#070}.bar{display:block;height:8px;background:#4a8}
.barbg{display:inline-block;width:80px;height:8px;background:#ddd;margin-right:6px;vertical-align:middle}
td:has(.barbg){white-space:nowrap}
.pill{display:inline-block;padding:0 6px;border-radius:8px;background:#eee;margin-right:4px}
"""


def h(value: object) -> str:
    return escape(str(value), quote=True)


def _table(head: Iterable[str], rows: list[str], empty: str, cls: str) -> str:
    if not rows:
        return f'<p class="muted" id="{cls}-empty">{h(empty)}</p>'
    cols = "".join(f"<th>{h(c)}</th>" for c in head)
    return f'<table class="{cls}"><thead><tr>{cols}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _bar(used: int, total: int) -> str:
    width = 0 if total <= 0 else min(80, round(80 * used / total))
    return f'<span class="barbg"><span class="bar" style="width:{width}px"></span></span>{used}/{total}'


def render(agents: list[AgentView], runners: list[RunnerRow], failures: list[RunnerRow],
           startup: list[StartupStat], now: float) -> str:
    online = sum(a.online for a in agents)
    capacity = sum(a.max_runners for a in agents if a.online)
    used = sum(a.runners for a in agents if a.online)
    agent_rows = []
    for a in agents:
        placement = "".join(
            f'<span class="pill {"warn" if c.reason == "drained" else "bad"}" data-reason="{h(c.reason)}">'
            f'{h(c.reason)}</span> {h(c.message)}<br>' for c in a.conditions) or '<span class="ok">ok</span>'
        templates = "<br>".join(f"{h(t.name)} {h(t.version)} <span class=muted>{h(t.digest[:12])}</span>"
                                for t in a.templates) or '<span class="muted">none</span>'
        status = '<span class="ok">online</span>' if a.online else '<span class="bad">offline</span>'
        agent_rows.append(
            f'<tr data-agent="{h(a.agent_id)}" data-online="{int(a.online)}" data-drained="{int(a.drained)}" '
            f'data-runners="{a.runners}" data-max="{a.max_runners}"><td>{h(a.agent_id)}</td><td>{h(a.hostname)}</td>'
            f"<td>{h(a.driver)} {h(a.agent_version)}</td><td>{status}</td><td>{placement}</td>"
            f"<td>{_bar(a.runners, a.max_runners)}</td><td>{templates}</td><td>{ago(now - a.last_seen)} ago</td></tr>")
    by_state: dict[str, list[RunnerRow]] = {}
    for r in runners:
        by_state.setdefault(r.state, []).append(r)
    state_parts = []
    for state in [*STATE_ORDER, *sorted(set(by_state) - set(STATE_ORDER))]:
        rows = [f'<tr data-runner="{h(r.runner_id)}" data-state="{h(r.state)}"><td>{h(r.runner_id)}</td>'
                f"<td>{h(r.runner_name)}</td><td>{h(r.agent_id)}</td><td>{h(r.template)}</td>"
                f"<td>{h(r.resource_type)}</td><td>{h(r.guest_state)}</td><td>{h(r.ip_address or '-')}</td>"
                f"<td>{ago(now - r.created_at)}</td><td>{h(r.error[:200])}</td></tr>" for r in by_state.get(state, [])]
        if rows:
            state_parts.append(f'<h3 data-state-heading="{h(state)}">{h(state)} ({len(rows)})</h3>' + _table(
                ("runner", "name", "agent", "template", "type", "guest", "address", "age", "error"), rows, "",
                "runners"))
    failure_rows = [
        f'<tr data-failure="{h(r.runner_id)}"><td>{ago(now - r.updated_at)} ago</td><td>{h(r.runner_name)}</td>'
        f"<td>{h(r.agent_id)}</td><td>{h(r.template)}</td><td>{h(r.state)}</td>"
        f"<td>{h(r.reap_reason or r.error)}</td></tr>" for r in failures]
    startup_rows = [
        f'<tr data-startup="{h(s.template)}:{h(s.phase)}"><td>{h(s.template)}</td><td>{h(s.phase)}</td>'
        f"<td>{s.count}</td><td>{s.p50:.2f}</td><td>{s.p95:.2f}</td></tr>" for s in startup]
    warm_rows = [
        f'<tr data-warm="{h(a.agent_id)}:{h(t.name)}"><td>{h(a.agent_id)}</td><td>{h(t.name)}</td>'
        f"<td>{_bar(t.warm_slots - t.free_warm_slots, t.warm_slots)}</td></tr>"
        for a in agents for t in a.templates if t.warm_slots]
    counts = " ".join(f'<span class="pill" data-count="{h(s)}">{h(s)} {len(v)}</span>' for s, v in by_state.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>shoes-vz fleet</title><style>{CSS}</style></head><body>
<h1>shoes-vz fleet</h1>
<p id="summary"><span data-online="{online}" data-agents="{len(agents)}">{online} of {len(agents)} agents online</span>
· runners <span id="capacity">{_bar(used, capacity)}</span> · {counts or '<span class="muted">no runners</span>'}
· <span class="muted">refreshed {time.strftime('%H:%M:%S', time.localtime(now))}, every {REFRESH_SECONDS}s</span></p>
<h2>Agents</h2>
{_table(("agent", "host", "driver", "status", "placement", "runners", "templates", "last seen"), agent_rows,
        "no agent has registered", "agents")}
<h2>Runners by state</h2>
{"".join(state_parts) or '<p class="muted" id="runners-empty">no live runners</p>'}
<h2>Recent failures</h2>
{_table(("when", "runner", "agent", "template", "state", "reason"), failure_rows, "no failures", "failures")}
<h2>Startup, last 24 h (seconds)</h2>
{_table(("template", "phase", "runners", "P50", "P95"), startup_rows, "no runner got ready yet", "startup")}
<h2>Warm slots in use</h2>
{_table(("agent", "template", "in use"), warm_rows, "no warm slots", "warm")}
</body></html>
"""


class StatusPage:
    def __init__(self, store: Store, tokens: list[str], require_auth: bool) -> None:
        self.store = store
        self.fleet = Fleet(store)
        self.tokens = [t.encode() for t in tokens]
        self.require_auth = require_auth
        self.port = 0
        self._runner: web.AppRunner | None = None

    def _authorized(self, request: web.Request) -> bool:
        if not self.require_auth:
            return True
        value = request.headers.get("Authorization", "")
        scheme, _, rest = value.partition(" ")
        given = b""
        if scheme == "Bearer":
            given = rest.encode()
        elif scheme == "Basic":
            try:
                given = base64.b64decode(rest, validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                given = b""
        ok = False
        for token in self.tokens:  # every token compared: the time taken names none
            ok |= hmac.compare_digest(given, token)
        return ok and bool(given)

    async def handle(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="the viewer or operator token is needed\n",
                                headers={"WWW-Authenticate": 'Basic realm="shoes-vz", charset="UTF-8"'})
        agents, runners, summary = await self.store.call(self._read)
        body = render(agents, runners, summary.failures, summary.startup, time.time())
        return web.Response(text=body, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    def _read(self) -> tuple[list[AgentView], list[RunnerRow], Summary]:
        return self.fleet.agents(), self.fleet.runners(), self.fleet.summary()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> int:
        app = web.Application()
        app.router.add_get("/", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


__all__ = ["StatusPage", "render"]
