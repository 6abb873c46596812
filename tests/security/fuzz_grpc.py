#!/usr/bin/env python3
"""Fuzzing the gRPC surface of a real `shoes-vz server` process (docs/security.md §7): ShoesService,
AgentService — Enroll, RegisterAgent, Sync — and AdminService, with every kind of credential and none.

    python tests/security/fuzz_grpc.py [--count 10000] [--seed 1] [--time-limit 900] [--workdir DIR]

Inputs come from the protobuf descriptors: messages with random field values (edge numbers, NaN,
control characters, huge strings and lists, unknown enum values, valid-looking ids), messages of the
wrong type, truncated and bit-flipped encodings and plain garbage, sent as raw bytes; a Sync stream
gets one to four such frames. The same seed makes the same inputs. Prints the count of every status
code; fails (exit 1) on any INTERNAL or UNKNOWN, a server that died or stopped answering health
checks, a traceback in its log, a write outside its own directory, or a run cut short by the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoes_vz.wire import admin_pb2, agent_pb2, shoes_pb2

HERE = Path(__file__).resolve().parent
SITE = HERE / "fuzz_site"
SHOES_TOKEN = "fuzz-shoes-token-0123456789"
ENROLLMENT_TOKEN = "fuzz-enrollment-token-0123"
OPERATOR_TOKEN = "fuzz-operator-token-012345"
VIEWER_TOKEN = "fuzz-viewer-token-0123456"
AGENTS = ("agent-fuzz-a", "agent-fuzz-b")
BAD = {"INTERNAL", "UNKNOWN"}
RIGHT = {"AddInstance": ["myshoes"], "DeleteInstance": ["myshoes"], "Enroll": ["enrollment"],  # half the inputs
         "RegisterAgent": ["agent a", "agent b"], "Sync": ["agent a", "agent b"],
         "ListAgents": ["operator", "viewer"], "ListRunners": ["operator", "viewer"], "DrainAgent": ["operator"],
         "UndrainAgent": ["operator"], "DeleteRunner": ["operator"]}
MAX_MESSAGE = 2 * 1024 * 1024
INTERESTING = [
    "", " ", "a", "small", "xlarge2", "Unknown", "t", "macos-15", "agent-fuzz-a", "agent-fuzz-b", "agent-x",
    "0123456789abcdef", "shoes-vz-0123456789abcdef", "shoes-vz-", "192.168.64.5", "127.0.0.1", "::1", "0.0.0.0",
    "999.1.1.1", "6.6.6.6", "02:00:00:00:00:01", "job-1", "../../etc/passwd", "/", ".drafts", "a\nb",
    "x\x00y", "\u202e", "日本語", "'; DROP TABLE runners; --", "%s%s%n", "${HOME}", "disk_full", "clone_failed",
]


def services() -> list[d.ServiceDescriptor]:
    return [shoes_pb2.DESCRIPTOR.services_by_name["ShoesService"],
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"]]


@dataclass(frozen=True)
class Target:
    path: str                    # /package.Service/Method
    request: d.Descriptor
    streaming: bool


def targets() -> list[Target]:
    return [Target(f"/{s.full_name}/{m.name}", m.input_type, m.client_streaming) for s in services()
            for m in s.methods]


def plausible(rng: random.Random) -> dict[str, Callable[[], object]]:
    """Field name → a value that passes the server's limits, so that inputs reach past them too."""
    hexid = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))  # noqa: E731
    return {
        "agent_id": lambda: rng.choice([*AGENTS, "agent-" + hexid(16)]),
        "runner_id": lambda: hexid(16), "request_id": lambda: hexid(16),
        "runner_name": lambda: rng.choice(["job-1", "job-2", "j" + hexid(6)]),
        "runner": lambda: rng.choice(["job-1", hexid(16), "shoes-vz-" + hexid(16)]),
        "cloud_id": lambda: "shoes-vz-" + hexid(16), "hostname": lambda: "host-1",
        "ip_address": lambda: rng.choice(["192.168.64.5", "192.168.64.6", "fe80::1", ""]),
        "mac_address": lambda: rng.choice(["02:00:00:00:00:01", "2:0:0:0:0:2", ""]),
        "name": lambda: rng.choice(["t", "macos-15"]), "template": lambda: rng.choice(["t", ""]),
        "resource_type": lambda: rng.choice(["small", "xlarge2", "Unknown", ""]),
        "resource_types": lambda: rng.choice(["small", "large", "bogus"]),
        "version": lambda: "1", "digest": lambda: hexid(64), "reason": lambda: rng.choice(["disk_full", ""]),
        "message": lambda: "full", "error": lambda: "failed", "error_message": lambda: "failed",
        "setup_script": lambda: "#!/bin/sh\necho hi\n", "labels": lambda: "macOS", "os": lambda: "Linux 6",
        "arch": lambda: "x86_64", "driver": lambda: rng.choice(["sim", "vz"]), "agent_version": lambda: "0.1.0",
        "max_runners": lambda: rng.randint(0, 4), "cpu_cores": lambda: rng.randint(0, 8),
        "memory_bytes": lambda: rng.randint(0, 1 << 34), "warm_slots": lambda: 0, "free_warm_slots": lambda: 0,
        "active_runners": lambda: rng.randint(0, 2), "seconds": lambda: rng.randint(0, 2_000_000_000),
        "nanos": lambda: 0,
    }


class Inputs:
    """Random protobuf messages and byte strings for a descriptor, from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.types = [t.request for t in targets()]
        self.valid = plausible(rng)
        self.careful = False  # while set, fields take plausible values (most of one message, or none)
        self.budget = 0       # characters a message's strings may still take (a huge one now and then)

    def text(self) -> str:
        r = self.rng
        kind = r.random()
        self.budget -= 60
        if kind < 0.35:
            return r.choice(INTERESTING)
        if kind < 0.6:
            return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789-._") for _ in range(r.randint(1, 40)))
        if kind < 0.8:
            return "".join(chr(r.choice([r.randint(0, 0x1F), r.randint(0x20, 0x7E), r.randint(0xA0, 0x2FFF),
                                         r.randint(0xE000, 0xFFFD)])) for _ in range(r.randint(1, 60)))
        if kind < 0.99 or self.budget < 20_000:
            return (r.choice(INTERESTING) * r.randint(2, 200))[: max(1, self.budget)]
        size = min(self.budget, r.choice([20_000, 300_000, MAX_MESSAGE + 10]))
        self.budget -= size
        return "z" * size

    def number(self, f: d.FieldDescriptor) -> int | float | bool:
        r = self.rng
        if f.type == f.TYPE_BOOL:
            return r.random() < 0.5
        if f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
            return r.choice([0.0, -0.0, -1.0, 1e-300, 1e308, math.inf, -math.inf, math.nan, r.uniform(-1e6, 1e6)])
        unsigned = f.type in (f.TYPE_UINT32, f.TYPE_UINT64, f.TYPE_FIXED32, f.TYPE_FIXED64)
        bits = 64 if f.type in (f.TYPE_INT64, f.TYPE_UINT64, f.TYPE_SINT64, f.TYPE_FIXED64, f.TYPE_SFIXED64) else 32
        low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return r.choice([0, 1, 2, 3, 64, 65, 100, -1, low, high, r.randint(low, high)])

    def value(self, f: d.FieldDescriptor, depth: int) -> object:
        if self.careful and f.name in self.valid and self.rng.random() < 0.95:
            return self.valid[f.name]()
        if f.type == f.TYPE_MESSAGE:
            return self.message(f.message_type, depth + 1)
        if f.type == f.TYPE_STRING:
            return self.text()
        if f.type == f.TYPE_BYTES:
            return self.rng.randbytes(self.rng.randint(0, 64))
        if f.type == f.TYPE_ENUM:
            values = [v.number for v in f.enum_type.values]
            return self.rng.choice(values + [99, -5, 2**31 - 1])
        return self.number(f)

    def message(self, desc: d.Descriptor, depth: int = 0) -> Message:
        msg = GetMessageClass(desc)()
        if depth > 3:
            return msg
        for f in desc.fields:
            if self.rng.random() < 0.3:
                continue
            if f.is_repeated:
                n = self.rng.choice([0, 0, 1, 1, 2, 3, 5, 17, 65, 129, 257] if depth == 0 else [0, 1, 2, 3])
                if self.rng.random() < 0.01:
                    n = 2100  # the 2,000 templates
                items = getattr(msg, f.name)
                for _ in range(n):
                    v = self.value(f, depth)
                    if f.type == f.TYPE_MESSAGE:
                        items.add().CopyFrom(v)  # type: ignore[arg-type]
                    else:
                        items.append(v)
            elif f.type == f.TYPE_MESSAGE:
                getattr(msg, f.name).CopyFrom(self.value(f, depth))  # type: ignore[arg-type]
            else:
                with contextlib.suppress(ValueError, TypeError):  # e.g. a value outside a closed enum
                    setattr(msg, f.name, self.value(f, depth))
        return msg

    def frame(self, desc: d.Descriptor) -> bytes:
        r = self.rng
        self.careful = r.random() < 0.5
        self.budget = MAX_MESSAGE + 100_000  # one message stays near the server's limit at most
        valid = self.message(desc).SerializeToString()
        self.careful = False
        kind = r.random()
        if kind < 0.6:
            return valid
        if kind < 0.7:
            return self.message(r.choice(self.types)).SerializeToString()  # a message of another type
        if kind < 0.8:
            return valid[: r.randint(0, max(0, len(valid) - 1))]
        if kind < 0.9:
            data = bytearray(valid or b"\x00")
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] = r.randrange(256)
            return bytes(data)
        return r.randbytes(r.randint(0, 200))


@dataclass
class Report:
    done: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    by_method: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def print(self, out: Callable[[str], object] = print) -> None:
        out(f"fuzz: {self.done} inputs in {self.seconds:.1f}s")
        for code, n in sorted(self.codes.items(), key=lambda kv: -kv[1]):
            out(f"  {code:20} {n}")
        for (method, code), n in sorted(self.by_method.items()):
            out(f"  {method.rsplit('/', 1)[1]:15} {code:20} {n}")
        for f in self.failures:
            out(f"FAIL: {f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`shoes-vz server` as a process in `root`, watched for writes outside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.addr = f"127.0.0.1:{free_port()}"
        self.log = root / "server.log"
        self.writes = root / "writes-outside.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        cfg = self.root / "server.toml"
        values = {"listen": self.addr, "metrics_listen": "", "db_path": str(self.root / "db" / "server.db"),
                  "shoes_token": SHOES_TOKEN, "enrollment_token": ENROLLMENT_TOKEN, "operator_token": OPERATOR_TOKEN,
                  "viewer_token": VIEWER_TOKEN,
                  "add_instance_timeout": 0.3, "command_resend_after": 1.0, "sync_interval": 1.0}
        cfg.write_text("[server]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOESVZ_") or k == "SHOESVZ_TEST_BOUNDARY"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
        env["SHOESVZ_FUZZ_WRITES"] = json.dumps({"allowed": [str(self.root), "/dev"], "report": str(self.writes)})
        with open(self.log, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shoes_vz.cli.main", "server", "-c", str(cfg), cwd=self.root, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while not await self.healthy():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    async def healthy(self) -> bool:
        async with grpc.aio.insecure_channel(self.addr) as ch:
            try:
                r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


async def enrolled(addr: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """Two agents enrolled and registered (a template serving `small`): the credentials."""
    creds = {}
    async with grpc.aio.insecure_channel(addr) as ch:
        enroll = ch.unary_unary("/shoes.vz.agent.v1.AgentService/Enroll")
        register = ch.unary_unary("/shoes.vz.agent.v1.AgentService/RegisterAgent")
        for agent_id in AGENTS:
            raw = await enroll(agent_pb2.EnrollRequest(agent_id=agent_id).SerializeToString(),
                               metadata=(("authorization", f"Bearer {ENROLLMENT_TOKEN}"),), timeout=10)
            md = (("authorization", f"Agent {agent_id}:{agent_pb2.EnrollResponse.FromString(raw).agent_secret}"),)
            await register(agent_pb2.RegisterAgentRequest(agent_id=agent_id, capacity=agent_pb2.AgentCapacity(
                max_runners=2), templates=[agent_pb2.Template(name="t", resource_types=["small"])]).SerializeToString(),
                metadata=md, timeout=10)
            creds[agent_id] = md
    return creds


def credentials(agents: dict[str, tuple[tuple[str, str], ...]]) -> dict[str, tuple[tuple[str, str], ...]]:
    bearer = lambda t: (("authorization", f"Bearer {t}"),)  # noqa: E731
    return {"none": (), "wrong bearer": bearer("not-a-token-of-this-server"), "myshoes": bearer(SHOES_TOKEN),
            "enrollment": bearer(ENROLLMENT_TOKEN), "operator": bearer(OPERATOR_TOKEN),
            "viewer": bearer(VIEWER_TOKEN),
            "malformed agent": (("authorization", "Agent agent-fuzz-a"),),
            "forged agent secret": (("authorization", "Agent agent-fuzz-a:" + "A" * 43),),
            **{f"agent {a[-1]}": md for a, md in agents.items()}}


def one(ch: grpc.Channel, target: Target, md: tuple[tuple[str, str], ...], frames: list[bytes]) -> tuple[str, str]:
    """The status code name one call ends with, and its details. The blocking client: grpc.aio's reports
    its own failed write as INTERNAL when the server has ended a stream (attackers.sync says more)."""
    try:
        if not target.streaming:
            ch.unary_unary(target.path)(frames[0], metadata=md, timeout=10)
            return "OK", ""
        call = ch.stream_stream(target.path)(iter(frames), metadata=md, timeout=10)
        for _ in call:  # the server ends the stream once we stopped writing
            pass
        return call.code().name, call.details() or ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""  # type: ignore[attr-defined]


async def fuzz(count: int, seed: int, time_limit: float, root: Path, concurrency: int = 16) -> Report:
    report = Report()
    server = Server(root)
    started = time.monotonic()
    await server.start()
    try:
        creds = credentials(await enrolled(server.addr))
        def case(i: int) -> tuple[Target, str, list[bytes]]:
            """Input i of this seed: the same whatever ran before it or how long it took."""
            r = random.Random(f"{seed}:{i}")
            gen = Inputs(r)
            target = r.choice(targets())
            frames = [gen.frame(target.request) for _ in range(r.randint(1, 4) if target.streaming else 1)]
            method = target.path.rsplit("/", 1)[1]
            return target, r.choice(RIGHT[method] if r.random() < 0.5 else list(creds)), frames

        deadline = started + time_limit
        opts = [("grpc.max_send_message_length", 4 * MAX_MESSAGE), ("grpc.max_receive_message_length", 4 * MAX_MESSAGE)]
        lock = threading.Lock()

        def run(ch: grpc.Channel, i: int) -> None:
            if time.monotonic() > deadline:
                return
            target, cred, frames = case(i)  # made here, in the worker: only the inputs in flight are in memory
            code, details = one(ch, target, creds[cred], frames)
            with lock:
                report.done += 1
                report.codes[code] += 1
                report.by_method[(target.path, code)] += 1
                if code in BAD:
                    report.failures.append(f"{code} ({details[:200]}) from {target.path} with {cred} "
                                           f"credentials (input {i}, frames: {[f[:40] for f in frames]})")

        def run_all() -> None:
            with grpc.insecure_channel(server.addr, options=opts) as ch, \
                    ThreadPoolExecutor(concurrency, thread_name_prefix="fuzz") as pool:
                for f in [pool.submit(run, ch, i) for i in range(count)]:
                    f.result()

        await asyncio.to_thread(run_all)
        if report.done < count:
            report.failures.append(f"only {report.done} of {count} inputs ran within {time_limit:g}s")
        if server.proc is not None and server.proc.returncode is not None:
            report.failures.append(f"the server died (status {server.proc.returncode})")
        elif not await server.healthy():
            report.failures.append("the server stopped answering health checks")
    finally:
        status = await server.stop()
        report.seconds = time.monotonic() - started
    if status not in (0, None):
        report.failures.append(f"the server exited with status {status} when stopped")
    log = server.log.read_text(errors="replace")
    if "Traceback" in log:
        at = log.index("Traceback")
        report.failures.append("a traceback in the server's log: " + log[max(0, at - 300):at + 1500])
    if server.writes.exists() and server.writes.read_text().strip():
        report.failures.append("writes outside the server's directory: " + server.writes.read_text()[:2000])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000, help="inputs to send")
    p.add_argument("--seed", type=int, default=1, help="the same seed sends the same inputs")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds; a run cut short fails")
    p.add_argument("--workdir", type=Path, help="keep the server's files here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shoes-vz-fuzz-")))
        root.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(fuzz(args.count, args.seed, args.time_limit, root))
    report.print()
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
