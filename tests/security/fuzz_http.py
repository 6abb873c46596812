#!/usr/bin/env python3
"""Fuzzing the guest-facing HTTP surfaces (docs/security.md §12): the agent's notify server and a
guest's runner-agent (/health, /status, /exec), each a real process of its own.

    python tests/security/fuzz_http.py [--count 10000] [--seed 1] [--time-limit 900] [--workdir DIR]

Every input is made from (seed, index) alone: a request line (methods, paths, versions, junk), headers
(Content-Length right, wrong, negative, huge or missing, chunked, an Authorization with the right
token, a wrong one or none, junk lines) and a body (JSON with random structure, NaN and infinities,
huge numbers, NUL and control characters, deep nesting; or random, truncated bytes). An /exec with the
right token only ever asks for harmless commands (`true`, `echo`) with random fields around them.
Prints the count of every answer; fails (exit 1) on any 5xx, a process that died, a traceback in its
log, a write outside its own directory, or a run cut short by the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITE = HERE / "fuzz_site"
GUEST_IP = "127.0.0.1"
NOTIFY_SERVER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from shoes_vz.agent.notify import NotifyServer
    async def main():
        server = NotifyServer(list, Path(sys.argv[1]))
        print(await server.start("127.0.0.1:0"), flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")
WORDS = ["", "a", "0", "-1", "1e309", "NaN", "\x00", "\r\n", "ü", "../../etc/passwd", "x" * 5000, "/tmp", "true"]


@dataclass
class Report:
    codes: Counter[str] = field(default_factory=Counter)
    by_target: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    done: int = 0
    seconds: float = 0.0

    def print(self) -> None:
        print(f"fuzz_http: {self.done} inputs in {self.seconds:.1f}s")
        for (target, code), n in sorted(self.by_target.items()):
            print(f"  {target:<12} {code:<8} {n}")
        for f in self.failures[:20]:
            print(f"  FAILURE: {f}")


class Inputs:
    """One request's bytes from a random source (the same source, the same bytes)."""

    def __init__(self, rnd: random.Random, token: str) -> None:
        self.r, self.token = rnd, token

    def value(self, depth: int = 0) -> object:
        r = self.r
        kind = r.randrange(10 if depth < 4 else 6)
        if kind == 0:
            return r.choice([0, -1, 1, 2**63, -(2**70), 1e308, 0.5])
        if kind == 1:
            return r.choice([float("nan"), float("inf"), float("-inf")])
        if kind == 2:
            return r.choice([True, False, None])
        if kind in (3, 4, 5):
            return r.choice(WORDS) + "".join(chr(r.randrange(0, 0x250)) for _ in range(r.randrange(8)))
        if kind in (6, 7):
            return [self.value(depth + 1) for _ in range(r.randrange(5))]
        return {r.choice(["command", "cwd", "timeout", "ip_address", "mac_address", "runner_id", "x"]):
                self.value(depth + 1) for _ in range(r.randrange(5))}

    def body(self, target: str) -> bytes:
        r = self.r
        kind = r.randrange(8)
        if kind == 0:
            return bytes(r.randrange(256) for _ in range(r.randrange(200)))
        if kind == 1:
            n = r.randrange(100, 3000)
            return (b"[" * n + b"]" * n) if r.random() < 0.5 else (b'{"a":' * n + b"1" + b"}" * n)
        if kind == 2 and target == "exec":  # the right shape around a harmless command
            req = {"command": r.choice([["true"], ["echo", str(self.value())], "echo fuzz", "true"]),
                   "timeout": r.choice([0.5, 1, 2, float("nan"), -1, "5", None, 10**9]),
                   "cwd": r.choice([None, "/", "/tmp", "/nonexistent", "a\x00b", 7])}
            return json.dumps({k: v for k, v in req.items() if v is not None or r.random() < 0.3}).encode()
        if kind == 3 and target == "notify":
            ip = r.choice(["127.0.0.1", "10.0.0.1", "", "999.1.1.1", "::1"])
            return json.dumps({"runner_id": self.value(), "ip_address": ip,
                               "mac_address": r.choice(["02:00:00:00:00:01", "zz", "", str(self.value())])}).encode()
        data = json.dumps(self.value()).encode()
        return data[: r.randrange(len(data) + 1)] if r.random() < 0.2 else data

    def request(self, target: str) -> bytes:
        r = self.r
        paths = {"notify": ["/notify-ip", "/notify-ip?x=1", "/", "/exec"],
                 "agent": ["/exec", "/exec", "/health", "/status", "/x", "/exec?x"]}[target]
        method = r.choice(["POST", "POST", "GET", "PUT", "HEAD", "DELETE", "P\x00ST", "GET " * 3])
        path = r.choice(paths) if r.random() < 0.9 else "/" + "a" * r.randrange(20000)
        version = r.choice(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTX", ""])
        body = self.body("exec" if target == "agent" else "notify")
        headers = ["Host: fuzz"]
        length = r.choice([len(body)] * 6 + [0, -1, len(body) + 10, 10**12, "x"])
        if r.random() < 0.95:
            headers.append(f"Content-Length: {length}")
        if r.random() < 0.05:
            headers.append("Transfer-Encoding: chunked")
        if target == "agent":
            headers.append(r.choice([f"Authorization: Bearer {self.token}"] * 3 +
                                    ["Authorization: Bearer wrong", "Authorization: Basic x", ""]))
        if r.random() < 0.1:
            headers.append(r.choice(["X: " + "y" * r.randrange(20000), "no colon", " leading: space", "\x00: x"]))
        head = f"{method} {path} {version}\r\n" + "\r\n".join(h for h in headers if h) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + body


def send(port: int, data: bytes, timeout: float = 20.0) -> str:
    """The answer's status code, or `closed` (closed unanswered), or `timeout`."""
    try:
        with socket.create_connection((GUEST_IP, port), timeout=timeout) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may answer and close before it took everything
            reply = b""
            while len(reply) < 64:
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        return "timeout"
    except ConnectionResetError:
        return "closed"
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", reply)
    return m.group(1).decode() if m else ("closed" if not reply else "garbled")


def start(argv: list[str], log: Path, allowed: list[Path], report: Path) -> subprocess.Popen[bytes]:
    # TMPDIR in the allowed tree: imports that probe libraries through temporary files (asyncssh's
    # ctypes lookups) write there; /dev/null is no file
    tmp = allowed[0] / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(tmp), "SHOESVZ_FUZZ_WRITES": json.dumps(
               {"allowed": [*(str(a) for a in allowed), os.devnull], "report": str(report)})}
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=f, stdin=subprocess.DEVNULL, env=env)


def fuzz(count: int, seed: int, time_limit: float, root: Path) -> Report:
    report, t0 = Report(), time.monotonic()
    writes = root / "writes.log"
    runners = root / "runners"  # everything either process may write lives in here
    (runners / "runner").mkdir(parents=True)
    (runners / "state").mkdir()
    agent_log, notify_log = root / "runner-agent.log", root / "notify.log"
    token_file = runners / "token"
    agent = start([sys.executable, "-m", "shoes_vz.guest.runner_agent", "--listen", f"{GUEST_IP}:0",
                   "--runner-dir", str(runners / "runner"), "--state-dir", str(runners / "state"),
                   "--token-file", str(token_file), "--ip", GUEST_IP, "--mac", "02:00:00:00:00:09",
                   "--runner-id", "fuzz"], agent_log, [runners], writes)
    notify = start([sys.executable, "-c", NOTIFY_SERVER, str(runners / "dhcpd_leases")], notify_log, [runners], writes)
    try:
        assert notify.stdout is not None
        notify_port = int(notify.stdout.readline() or 0)
        deadline = time.monotonic() + 30
        agent_port = 0
        while not agent_port and time.monotonic() < deadline:
            m = re.search(r"listening address=[\d.]+:(\d+)", agent_log.read_text())
            agent_port = int(m.group(1)) if m else 0
            time.sleep(0.05)
        if not (notify_port and agent_port and token_file.exists()):
            report.failures.append(f"a server did not start: {agent_log.read_text()[-500:]} {notify_log.read_text()}")
            return report
        token = token_file.read_text().strip()

        def one(i: int) -> tuple[str, str]:
            rnd = random.Random(f"{seed}:{i}")
            target = "agent" if i % 2 else "notify"
            data = Inputs(rnd, token).request(target)
            return target, send(agent_port if target == "agent" else notify_port, data)

        with ThreadPoolExecutor(8) as pool:  # below both servers' connection bounds
            for target, code in pool.map(one, range(count)):
                report.done += 1
                report.codes[code] += 1
                report.by_target[(target, code)] += 1
                if code.startswith("5") or code in ("timeout", "garbled"):
                    report.failures.append(f"{target}: answered {code} (input {report.done - 1} of seed {seed})")
                if time.monotonic() - t0 > time_limit:
                    report.failures.append(f"cut short by the time limit after {report.done} inputs")
                    break
        for name, proc, log in (("runner-agent", agent, agent_log), ("notify server", notify, notify_log)):
            if proc.poll() is not None:
                report.failures.append(f"the {name} died (exit {proc.returncode})")
            if "Traceback" in log.read_text(errors="replace"):
                report.failures.append(f"a traceback in the {name}'s log: {log}")
        if writes.exists() and writes.read_text().strip():
            report.failures.append("writes outside the runners directory:\n" + writes.read_text()[:2000])
    finally:
        for proc in (agent, notify):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        report.seconds = time.monotonic() - t0
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=900)
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoes-vz-fuzz-http-") as tmp:
        report = fuzz(a.count, a.seed, a.time_limit, a.workdir or Path(tmp))
    report.print()
    return 1 if report.failures or report.done < a.count else 0


if __name__ == "__main__":
    sys.exit(main())
