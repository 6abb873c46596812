"""The IP-notify HTTP server guests POST to (DESIGN §3.4): a hint, never proof (docs/security.md §8, §10).

A matched notify makes that runner's channel say hello at once (`Runner.notified`); the address,
/exec token and SSH host key the agent uses come from the runner channel alone. A notify is still
matched before it counts: by the request's **source address** and the runner's **MAC**, cross-checked
against the DHCP leases (the lease for that MAC, and the lease holding that address) — never first
come, first served. Upstream's body `{runner_id, ip_address}` (no MAC) is matched by source address
against the leases of our live runners. Anything else is refused with 403.

Guests are hostile, so this is a small HTTP/1.1 server of its own (aiohttp has no deadline for
receiving a request's headers): one request per connection, which must arrive within
REQUEST_TIMEOUT (slow senders are cut off), headers and body capped, at most MAX_CONNECTIONS at
once (more are closed at once), 400 for any malformed request or JSON (too deep a nesting too), and
what a guest sends reaches the log only escaped, capped and at most once per source per LOG_EVERY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from shoes_vz.agent.runner import Runner
from shoes_vz.core.net import split_hostport
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

log = logging.getLogger(__name__)
PATH = "/notify-ip"
MAX_BODY = 4096
MAX_HEADERS = 8192        # request line and headers together
REQUEST_TIMEOUT = 5.0     # seconds to receive the whole request
MAX_CONNECTIONS = 64
LOG_EVERY = 10.0          # seconds between two refusal lines about one source


class _Bad(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _shown(value: object, limit: int = 64) -> str:
    """A guest's string as it may reach a log line: escaped and capped."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


class NotifyServer:
    def __init__(self, runners: Callable[[], Iterable[Runner]], lease_file: Path) -> None:
        self.runners = runners
        self.lease_file = lease_file
        self._server: asyncio.Server | None = None
        self._active = 0
        self._said: dict[str, float] = {}

    async def start(self, listen: str) -> int:
        """Listen on `listen` (host:port, port 0 for any); the port bound."""
        host, port = split_hostport(listen)
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADERS)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        source = str(peer[0])
        if self._active >= MAX_CONNECTIONS:  # never queue behind slow ones
            writer.close()
            return
        self._active += 1
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    body = await _read_request(reader)
                status, answer = await self.decide(source, body)
            except TimeoutError:
                status, answer = 408, {"error": f"the request did not arrive within {REQUEST_TIMEOUT:g}s"}
            except _Bad as e:
                status, answer = e.status, {"error": e.reason}
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            if status == 403:
                self._refused(source, str(answer.get("error", "")))
            data = json.dumps(answer).encode()
            head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
            with contextlib.suppress(ConnectionError, TimeoutError):
                writer.write(head + data)
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        finally:
            self._active -= 1
            writer.close()

    def _refused(self, source: str, why: str) -> None:
        now = time.monotonic()
        if now - self._said.get(source, -LOG_EVERY) >= LOG_EVERY:
            self._said[source] = now
            if len(self._said) > 4096:  # a forgetful bound: a flood of sources cannot grow this forever
                self._said = {source: now}
            log.warning("notify from %s refused: %s", _shown(source), why)

    async def decide(self, source: str, body: Any) -> tuple[int, dict[str, Any]]:
        """The answer to a well-formed notify from `source` (see the module docstring)."""
        if not isinstance(body, dict) or not isinstance(body.get("ip_address"), str):
            return 400, {"error": "expected a JSON object with ip_address"}
        claimed = body["ip_address"]
        if claimed != source:
            return 403, {"error": f"claims {_shown(claimed)} but comes from {source}"}
        live = [r for r in self.runners() if r.live]
        leases = await asyncio.to_thread(read_leases, self.lease_file)
        raw_mac = body.get("mac_address")
        if raw_mac:
            try:
                mac = MACAddress.parse(str(raw_mac))
            except ValueError:
                return 403, {"error": f"bad mac_address {_shown(raw_mac)}"}
            runner = next((r for r in live if r.mac == mac), None)
            if runner is None:
                return 403, {"error": f"no live runner has MAC {mac}"}
            lease = newest_lease_for(leases, mac)
            if lease is not None and lease.ip != source:
                return 403, {"error": f"the lease for {mac} is {lease.ip}, not {source}"}
            holders = [le for le in leases if le.ip == source and not le.expired() and le.mac != mac]
            if holders:
                return 403, {"error": f"{source} is leased to another MAC"}
        else:
            matches = [r for r in live if (le := newest_lease_for(leases, r.mac)) and le.ip == source]
            if len(matches) != 1:
                return 403, {"error": "no MAC given and no single live runner holds this lease"}
            runner = matches[0]
        runner.notified(source)
        runner.log.info("notify: runner %s hinted from %s", runner.runner_id, source)
        return 200, {"runner_id": runner.runner_id}


async def _read_request(reader: asyncio.StreamReader) -> Any:
    """The JSON body of a `POST /notify-ip`, or _Bad with the status to answer."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Bad(431, f"request line and headers over {MAX_HEADERS} bytes") from None
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise
        raise _Bad(400, "the request ended inside its headers") from None
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _Bad(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise _Bad(400, "HTTP/1.x only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise _Bad(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if target.split("?", 1)[0] != PATH:
        raise _Bad(404, f"no such endpoint (only POST {PATH})")
    if method != "POST":
        raise _Bad(405, f"only POST {PATH}")
    if "transfer-encoding" in headers:
        raise _Bad(411, "send a Content-Length, not a chunked body")
    try:
        length = int(headers.get("content-length", ""))
    except ValueError:
        raise _Bad(411, "a Content-Length is required") from None
    if length < 0:
        raise _Bad(400, "bad Content-Length")
    if length > MAX_BODY:
        raise _Bad(413, f"body over {MAX_BODY} bytes")
    raw = await reader.readexactly(length)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nesting too deep to parse
        raise _Bad(400, "the body is not JSON") from None


__all__ = ["NotifyServer"]
