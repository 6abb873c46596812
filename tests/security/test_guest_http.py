"""Attacks on the guest-facing HTTP surfaces (docs/security.md): the agent's notify server, which every
guest on the host's NAT network reaches, and a guest's runner-agent (/health, /status, /exec), which
every other guest on that network reaches. Each test performs the attack and fails if it works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_runner_agent import GUEST_IP, AgentProc, agent, receiver  # noqa: F401 - fixtures

from shoes_vz.agent import notify
from shoes_vz.guest import runner_agent
from shoes_vz.vm.leases import Lease, MACAddress, add_lease

# -- the agent's notify server -------------------------------------------------------------------


@pytest.fixture
async def notify_port(tmp_path: Path) -> AsyncIterator[int]:
    server = notify.NotifyServer(list, tmp_path / "dhcpd_leases")
    port = await server.start("127.0.0.1:0")
    yield port
    await server.close()


async def raw(port: int, data: bytes, *, wait: float = 10.0) -> tuple[int, bytes]:
    """Send `data`, read until the server closes: (status, body); status 0 when it closed unanswered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), wait)
    except ConnectionResetError:
        reply = b""
    finally:
        writer.close()
    if not reply:
        return 0, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(body: bytes, length: int | None = None) -> bytes:
    return (f"POST /notify-ip HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


@pytest.mark.parametrize("body, status", [
    (b"{", 400), (b"\xff\xfe", 400), (b"[1, 2]", 400), (b"null", 400), (b'{"ip_address": 5}', 400),
    (b"[" * 2000 + b"]" * 2000, 400),  # deep nesting: a RecursionError inside json.loads, never a 500
    (b'{"ip_address": "10.9.9.9"}', 403),  # well-formed, but claims an address it does not come from
    (b'{"ip_address": "127.0.0.1", "mac_address": "zz"}', 403),
    (b'{"ip_address": "127.0.0.1", "mac_address": "02:00:00:00:00:01"}', 403),  # no runner has it
])
async def test_notify_answers_malformed_input_with_4xx(notify_port: int, body: bytes, status: int) -> None:
    got, text = await raw(notify_port, post(body))
    assert got == status, text
    assert json.loads(text)["error"]


async def test_notify_refuses_a_huge_body_unread(notify_port: int) -> None:
    t0 = time.monotonic()
    got, _ = await raw(notify_port, post(b"", length=50 * 1024 * 1024))  # and sends none of it
    assert got == 413 and time.monotonic() - t0 < 2


async def test_notify_refuses_huge_headers(notify_port: int) -> None:
    got, _ = await raw(notify_port, b"POST /notify-ip HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert got == 431


async def test_notify_cuts_off_a_slow_sender(notify_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "REQUEST_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", notify_port)
    t0, data = time.monotonic(), b""
    writer.write(b"POST /notify-ip HTTP/1.1\r\nHost: x\r\n")
    try:
        while time.monotonic() - t0 < 6:  # one header byte every 0.1 s: never a whole request
            writer.write(b"X")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(), 0.1)
                break
        else:
            raise AssertionError("a slow sender kept its connection for 6 s")
    except ConnectionError:
        pass
    finally:
        writer.close()
    assert time.monotonic() - t0 < 2.5
    assert data.startswith(b"HTTP/1.1 408") or data == b"", data


async def test_notify_closes_connections_beyond_its_bound(notify_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "MAX_CONNECTIONS", 3)
    idle = [await asyncio.open_connection("127.0.0.1", notify_port) for _ in range(3)]
    await asyncio.sleep(0.1)
    got, _ = await raw(notify_port, post(b"{}"), wait=2)
    assert got == 0  # closed at once, never queued behind the idle ones
    for _, w in idle:
        w.close()
    await asyncio.sleep(0.1)
    assert (await raw(notify_port, post(b"{}")))[0] == 400  # and served again once they are gone


# -- a guest's runner-agent ------------------------------------------------------------------------


def send_raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection((GUEST_IP, port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:
                    return out


def test_exec_checks_the_token_before_reading_the_body(agent: AgentProc) -> None:  # noqa: F811
    t0 = time.monotonic()
    reply = send_raw(agent.port, b"POST /exec HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer wrong\r\n"
                                 b"Content-Length: 1000000\r\n\r\n")  # a body announced, never sent
    assert reply.startswith(b"HTTP/1.1 403") and time.monotonic() - t0 < 2, reply[:200]


@pytest.mark.parametrize("body", [
    {"command": ["echo", "a\x00b"]}, {"command": "echo a\x00b"}, {"command": ["true"], "cwd": "/tmp\x00/x"},
    {"command": ["true"], "timeout": float("nan")}, {"command": ["true"], "timeout": float("inf")},
    {"command": ["true"], "timeout": float("-inf")}, {"command": ["true"], "cwd": 7},
])
def test_exec_refuses_nul_and_non_finite_input(agent: AgentProc, body: dict[str, Any]) -> None:  # noqa: F811
    status, res = agent.exec(body)  # json.dumps writes NaN/Infinity, which Python's json.loads accepts
    assert status == 400 and res["error"], res


def test_exec_refuses_deep_nesting_and_bad_json(agent: AgentProc) -> None:  # noqa: F811
    for data in (b"[" * 100000, b"{" * 5 + b"\xff", b'{"command": ["true"]'):
        head = (f"POST /exec HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {agent.token}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        assert send_raw(agent.port, head + data).startswith(b"HTTP/1.1 400")


def test_exec_timeout_answers_at_once_though_a_background_child_holds_the_pipe(agent: AgentProc) -> None:  # noqa: F811
    t0 = time.monotonic()
    status, res = agent.exec({"command": "sleep 12 & echo started", "timeout": 2})
    elapsed = time.monotonic() - t0
    assert status == 200 and res["stdout"] == "started\n", res
    assert elapsed < 6, f"answered after {elapsed:.1f}s: the background sleep held the pipe"


def test_idle_connections_hold_no_thread_for_long(agent: AgentProc) -> None:  # noqa: F811
    """More idle connections than the bound: the extra one is closed at once, the idle ones are cut
    off after REQUEST_TIMEOUT, and then the agent serves again."""
    idle = [socket.create_connection((GUEST_IP, agent.port), timeout=5) for _ in range(runner_agent.MAX_CONNECTIONS)]
    try:
        for s in idle:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # a request line, and then nothing
        time.sleep(0.3)
        with socket.create_connection((GUEST_IP, agent.port), timeout=5) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
            assert extra.recv(100) == b"", "a connection beyond the bound was served or queued"
        t0 = time.monotonic()
        for s in idle:
            s.settimeout(runner_agent.REQUEST_TIMEOUT + 5)
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data  # cut off by the watchdog
        assert time.monotonic() - t0 < runner_agent.REQUEST_TIMEOUT + 3
    finally:
        for s in idle:
            s.close()
    status, res = agent.request("GET", "/health")
    assert status == 200 and res["status"] == "ok"


# -- what a well-formed notify may do ---------------------------------------------------------------


@dataclass
class FakeRunner:
    """What the notify server reads of a runner (agent/runner.py): a real one needs a VM."""

    runner_id: str
    mac: MACAddress
    live: bool = True
    hints: list[str] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("fake-runner"))  # the runner's adapter

    def notified(self, ip: str) -> None:
        self.hints.append(ip)


@pytest.mark.parametrize("source, body, status", [
    # B's MAC from an address the host leased to nobody: B's lease names another address
    ("10.0.0.9", {"mac_address": "02:00:00:00:00:0b"}, 403),
    # B's MAC from A's leased address (A claims B before or after B's lease appears)
    ("10.0.0.1", {"mac_address": "02:00:00:00:00:0b"}, 403),
    ("10.0.0.1", {"mac_address": "02:00:00:00:00:0c"}, 403),  # C boots: no lease for C yet, but 10.0.0.1 is A's
    ("10.0.0.1", {}, 200),  # upstream's body: matched to A by A's lease
    ("10.0.0.2", {"mac_address": "02:00:00:00:00:0b"}, 200),
])
async def test_a_notify_counts_only_for_the_runner_the_leases_name(tmp_path: Path, source: str,
                                                                   body: dict[str, str], status: int) -> None:
    leases = tmp_path / "dhcpd_leases"
    soon = datetime.now(UTC) + timedelta(minutes=10)
    for ip, mac in (("10.0.0.1", "02:00:00:00:00:0a"), ("10.0.0.2", "02:00:00:00:00:0b")):
        add_lease(leases, Lease(ip, MACAddress.parse(mac), soon))
    runners = [FakeRunner(n, MACAddress.parse(f"02:00:00:00:00:0{n}")) for n in "abc"]
    server = notify.NotifyServer(lambda: runners, leases)
    got, answer = await server.decide(source, {"runner_id": "x", "ip_address": source, **body})
    assert got == status, answer
    hinted = {r.runner_id for r in runners if r.hints}
    assert hinted == ({answer["runner_id"]} if status == 200 else set())


def test_a_slow_drip_sender_is_cut_off_at_the_request_deadline(agent: AgentProc) -> None:  # noqa: F811
    """One header byte every 0.5 s: no single read waits long, but the request never completes."""
    with socket.create_connection((GUEST_IP, agent.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nX-Drip: ")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < runner_agent.REQUEST_TIMEOUT + 5:
            try:
                s.sendall(b"a")
                s.settimeout(0.5)
                if s.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "a slow drip held its connection (and thread) past the request deadline"
        assert time.monotonic() - t0 < runner_agent.REQUEST_TIMEOUT + 2


@pytest.mark.parametrize("request_line, status", [
    (b"GET /health\r\n\r\n", b"400"),                       # HTTP/0.9: would be answered with no status line
    (b"PUT /exec HTTP/1.1\r\nHost: g\r\n\r\n", b"405"),     # http.server: 501
    (b"GET /health HTTP/2.0\r\nHost: g\r\n\r\n", b"400"),   # http.server: 505
])
def test_the_runner_agent_answers_what_it_cannot_parse_with_4xx(agent: AgentProc, request_line: bytes,  # noqa: F811
                                                                 status: bytes) -> None:
    assert send_raw(agent.port, request_line).startswith(b"HTTP/1.0 " + status + b" ") or \
        send_raw(agent.port, request_line).startswith(b"HTTP/1.1 " + status + b" ")
