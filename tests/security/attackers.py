"""What the attacks in tests/security are made of: raw gRPC calls with whatever credentials and bytes an
attacker chooses, against a real server over TCP. Nothing here knows the server's internals."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stack_fixtures import CLI, ENROLLMENT_TOKEN, TOKEN, bearer, cli_env, enroll

from shoes_vz.stack import free_port
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2 as spb

Metadata = tuple[tuple[str, str], ...]
AGENT = "/shoes.vz.agent.v1.AgentService/"
SHOES = "/shoes.vz.shoes.v1.ShoesService/"
UNARY = {AGENT + "Enroll": apb.EnrollResponse, AGENT + "RegisterAgent": apb.RegisterAgentResponse,
         SHOES + "AddInstance": spb.AddInstanceResponse, SHOES + "DeleteInstance": spb.DeleteInstanceResponse}
SYNC = AGENT + "Sync"
MYSHOES = bearer(TOKEN)
ENROLMENT = bearer(ENROLLMENT_TOKEN)


def agent_md(agent_id: str, secret: str) -> Metadata:
    return (("authorization", f"Agent {agent_id}:{secret}"),)


async def unary(addr: str, method: str, request: bytes | object, md: Metadata = (), timeout: float = 10
                ) -> grpc.StatusCode:
    """The status of one unary call (OK when it succeeded)."""
    data = request if isinstance(request, bytes) else request.SerializeToString()  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            await ch.unary_unary(method)(data, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def unary_error(addr: str, method: str, request: bytes | object, md: Metadata = (), timeout: float = 10
                      ) -> grpc.aio.AioRpcError | None:
    data = request if isinstance(request, bytes) else request.SerializeToString()  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            await ch.unary_unary(method)(data, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e
    return None


@dataclass
class SyncResult:
    code: grpc.StatusCode
    details: str = ""
    received: list[apb.SyncResponse] = field(default_factory=list)


def _sync_blocking(addr: str, md: Metadata, frames: list[bytes], timeout: float) -> SyncResult:
    received: list[apb.SyncResponse] = []
    with grpc.insecure_channel(addr) as ch:
        call = ch.stream_stream(SYNC)(iter(frames), metadata=md, timeout=timeout)
        try:
            for raw in call:
                received.append(apb.SyncResponse.FromString(raw))
        except grpc.RpcError as e:
            return SyncResult(e.code(), e.details() or "", received)  # type: ignore[attr-defined]
        return SyncResult(call.code(), call.details() or "", received)


async def sync(addr: str, md: Metadata, messages: Sequence[bytes | apb.SyncRequest], timeout: float = 20
               ) -> SyncResult:
    """A Sync stream that sends `messages` and half-closes; how the server ended it and what it sent.

    The blocking client, not grpc.aio's: when the server ends a stream while a client still writes,
    grpc.aio's client reports its own failed write as INTERNAL ("Internal error from Core") instead of
    the status the server sent; the blocking client reports what came over the wire."""
    frames = [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]
    return await asyncio.to_thread(_sync_blocking, addr, md, frames, timeout)


class Agent:
    """An enrolled agent the test drives by hand: its own stream, its own messages."""

    def __init__(self, addr: str, agent_id: str) -> None:
        self.addr, self.agent_id = addr, agent_id
        self.md: Metadata = ()
        self.commands: asyncio.Queue[apb.SyncResponse] = asyncio.Queue()
        self.outgoing: asyncio.Queue[apb.SyncRequest | None] = asyncio.Queue()
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self._task: asyncio.Task[None] | None = None

    async def enroll(self) -> Agent:
        async with grpc.aio.insecure_channel(self.addr) as ch:
            self.md = await enroll(ch, self.agent_id)
        return self

    async def register(self, slots: int = 2, templates: Sequence[apb.Template] = (), **kw: object) -> None:
        req = apb.RegisterAgentRequest(agent_id=self.agent_id, hostname="test",
                                       capacity=apb.AgentCapacity(max_runners=slots),
                                       templates=list(templates) or [apb.Template(name="t", resource_types=["small"])],
                                       **kw)  # type: ignore[arg-type]
        code = await unary(self.addr, AGENT + "RegisterAgent", req, self.md)
        assert code == grpc.StatusCode.OK, code

    def open(self, first: apb.SyncRequest | None = None) -> None:
        """The Sync stream, kept open in the background; commands land in `commands`."""
        self.outgoing.put_nowait(first or apb.SyncRequest(agent_id=self.agent_id))

        async def run() -> None:
            async with grpc.aio.insecure_channel(self.addr) as ch:
                async def requests() -> AsyncIterator[bytes]:
                    while (msg := await self.outgoing.get()) is not None:
                        yield msg.SerializeToString()

                call = ch.stream_stream(SYNC)(requests(), metadata=self.md)
                try:
                    async for raw in call:
                        self.commands.put_nowait(apb.SyncResponse.FromString(raw))
                except grpc.aio.AioRpcError as e:
                    self.status, self.details = e.code(), e.details() or ""
                    return
                self.status = await call.code()

        self._task = asyncio.create_task(run())

    def send(self, runners: Sequence[apb.Runner] = (), acks: Sequence[apb.CommandAck] = (),
             agent_id: str | None = None) -> None:
        self.outgoing.put_nowait(apb.SyncRequest(agent_id=self.agent_id if agent_id is None else agent_id,
                                                 runners=list(runners), acks=list(acks)))

    async def next_command(self, timeout: float = 5) -> apb.SyncResponse:
        return await asyncio.wait_for(self.commands.get(), timeout)

    async def ended(self, timeout: float = 5) -> grpc.StatusCode | None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.status

    async def close(self) -> None:
        self.outgoing.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def add_instance(addr: str, name: str, md: Metadata = MYSHOES, timeout: float = 15, **kw: object
                       ) -> spb.AddInstanceResponse:
    async with grpc.aio.insecure_channel(addr) as ch:
        raw = await ch.unary_unary(SHOES + "AddInstance")(
            spb.AddInstanceRequest(runner_name=name, **kw).SerializeToString(),  # type: ignore[arg-type]
            metadata=md, timeout=timeout)
    return spb.AddInstanceResponse.FromString(raw)


def runner(cmd: apb.CreateRunnerCommand, agent_id: str, state: int = apb.RUNNER_STATE_RUNNING,
           ip: str = "192.168.64.5") -> apb.Runner:
    return apb.Runner(runner_id=cmd.runner_id, runner_name=cmd.runner_name, agent_id=agent_id, state=state,
                      ip_address=ip)


@contextlib.asynccontextmanager
async def server_process(root: Path, *, verbose: bool = False, **settings: object) -> AsyncIterator[tuple[str, Path]]:
    """`shoes-vz server` as an operator runs it, its log in a file: (address, log path)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    values = {"listen": f"127.0.0.1:{port}", "metrics_listen": "", "db_path": str(root / "db" / "server.db"),
              "shoes_token": TOKEN, "enrollment_token": ENROLLMENT_TOKEN, **settings}
    cfg = root / "server.toml"
    cfg.write_text("[server]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(*CLI, "server", "-c", str(cfg), *(["-v"] if verbose else []),
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                                                    env=cli_env())
    addr = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for _ in range(400):
                assert proc.returncode is None, log.read_text()
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
        yield addr, log
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
