"""Attack 2 of issue 11, "one token opens everything", and the roles behind the fix (docs/security.md §2):
each credential opens its own door only, and no credential at all opens none."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from attackers import (
    AGENT,
    ENROLMENT,
    MYSHOES,
    SHOES,
    Agent,
    add_instance,
    agent_md,
    runner,
    sync,
    unary,
)
from stack_fixtures import bearer, eventually, server_settings

from shoes_vz.server.app import ServerApp
from shoes_vz.wire import agent_pb2 as apb
from shoes_vz.wire import shoes_pb2 as spb

OPERATOR = "test-operator-token-0123456"
VIEWER = "test-viewer-token-01234567"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerApp]:
    async with ServerApp(server_settings(tmp_path, operator_token=OPERATOR, viewer_token=VIEWER,
                                         add_instance_timeout=5)) as app:
        yield app


def addr(server: ServerApp) -> str:
    return f"127.0.0.1:{server.port}"


def register(agent_id: str = "agent-rogue", slots: int = 2, free_warm: int = 0) -> apb.RegisterAgentRequest:
    return apb.RegisterAgentRequest(agent_id=agent_id, hostname="rogue", capacity=apb.AgentCapacity(max_runners=slots),
                                    templates=[apb.Template(name="t", resource_types=["small"], warm_slots=free_warm,
                                                            free_warm_slots=free_warm)])


async def test_the_myshoes_credential_cannot_enrol_register_or_open_a_sync(server: ServerApp) -> None:
    """The plugin's token used to work on AgentService: a rogue agent registered with it, won the next
    placement, received the create command (registration token included) and named the address."""
    a = addr(server)
    assert await unary(a, AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-rogue"), MYSHOES) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert await unary(a, AGENT + "RegisterAgent", register(slots=64, free_warm=64), MYSHOES) == \
        grpc.StatusCode.PERMISSION_DENIED
    opened = await sync(a, MYSHOES, [apb.SyncRequest(agent_id="agent-rogue")])
    assert opened.code == grpc.StatusCode.PERMISSION_DENIED and not opened.received
    assert await server.store.call(server.store.agents) == []  # nothing was registered
    assert not server.hub.connections

    honest = await Agent(a, "agent-honest").enroll()
    await honest.register()
    honest.open()
    await eventually(lambda: "agent-honest" in server.hub.connections)
    call = asyncio.ensure_future(add_instance(a, "job-1", setup_script="echo registration-token"))
    cmd = (await honest.next_command()).create_runner  # the placement went to the only real agent
    assert cmd.setup_script == "echo registration-token"
    honest.send([runner(cmd, "agent-honest")], [apb.CommandAck(request_id=cmd.request_id, ok=True)])
    assert (await call).ip_address == "192.168.64.5"
    await honest.close()


async def test_each_credential_opens_its_own_service_only(server: ServerApp) -> None:
    a = addr(server)
    agent = await Agent(a, "agent-a").enroll()
    shoes_calls = [(SHOES + "AddInstance", spb.AddInstanceRequest(runner_name="job")),
                   (SHOES + "DeleteInstance", spb.DeleteInstanceRequest(cloud_id="shoes-vz-0000000000000000"))]
    agent_calls = [(AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-new")),
                   (AGENT + "RegisterAgent", register("agent-a"))]
    denied = grpc.StatusCode.PERMISSION_DENIED
    for md in (agent.md, ENROLMENT, bearer(OPERATOR), bearer(VIEWER)):
        for method, req in shoes_calls:
            assert await unary(a, method, req, md) == denied, (method, md)
    for md in (MYSHOES, bearer(OPERATOR), bearer(VIEWER)):
        for method, req in agent_calls:
            assert await unary(a, method, req, md) == denied, (method, md)
    assert await unary(a, AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-b"), agent.md) == denied
    assert await unary(a, AGENT + "RegisterAgent", register("agent-a"), ENROLMENT) == denied
    for md in (MYSHOES, ENROLMENT, bearer(OPERATOR), bearer(VIEWER)):
        assert (await sync(a, md, [apb.SyncRequest(agent_id="agent-a")])).code == denied
    # and each works where it belongs
    assert await unary(a, SHOES + "DeleteInstance", shoes_calls[1][1], MYSHOES) == grpc.StatusCode.NOT_FOUND
    assert await unary(a, AGENT + "RegisterAgent", register("agent-a"), agent.md) == grpc.StatusCode.OK
    assert await unary(a, AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-b"), ENROLMENT) == grpc.StatusCode.OK


BAD_CREDENTIALS = {
    "none": (),
    "a wrong bearer token": bearer("not-a-token-of-this-server"),
    "an unknown scheme": (("authorization", "Basic dXNlcjpwYXNz"),),
    "a malformed agent credential": (("authorization", "Agent no-secret-here"),),
    "an agent id that is not enrolled": agent_md("agent-ghost", "x" * 43),
    "two authorization headers": (("authorization", f"Bearer {MYSHOES[0][1][7:]}"),
                                  ("authorization", f"Bearer {MYSHOES[0][1][7:]}")),
}


@pytest.mark.parametrize("credential", list(BAD_CREDENTIALS))
async def test_every_call_kind_without_valid_credentials_is_unauthenticated(server: ServerApp,
                                                                             credential: str) -> None:
    """Streams included: an unauthenticated Sync used to answer INTERNAL now and then."""
    a, md = addr(server), BAD_CREDENTIALS[credential]
    unauth = grpc.StatusCode.UNAUTHENTICATED
    for method, req in [(AGENT + "Enroll", apb.EnrollRequest(agent_id="agent-x")),
                        (AGENT + "RegisterAgent", register("agent-x")),
                        (SHOES + "AddInstance", spb.AddInstanceRequest(runner_name="job")),
                        (SHOES + "DeleteInstance", spb.DeleteInstanceRequest(cloud_id="x")),
                        (AGENT + "RegisterAgent", b"\xff\xff\xff\x0f not protobuf")]:  # not decoded for a stranger
        assert await unary(a, method, req, md) == unauth, method
    frames = [apb.SyncRequest(agent_id="agent-x")] * 5  # a client that keeps writing gets the status too
    codes = await asyncio.gather(*(sync(a, md, frames[: 1 + i % 5]) for i in range(20)))
    codes += [await sync(a, md, [b"\xff\xff\xff\x0f"]), await sync(a, md, [])]
    assert {c.code for c in codes} == {unauth}, [c.code for c in codes]


async def test_the_wrong_secret_of_a_real_agent_is_unauthenticated(server: ServerApp) -> None:
    a = addr(server)
    agent = await Agent(a, "agent-a").enroll()
    secret = agent.md[0][1].split(":", 1)[1]
    for forged in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), secret + "x", ""):
        assert await unary(a, AGENT + "RegisterAgent", register("agent-a"), agent_md("agent-a", forged)) == \
            grpc.StatusCode.UNAUTHENTICATED
    assert await unary(a, AGENT + "RegisterAgent", register("agent-a"), agent.md) == grpc.StatusCode.OK


async def test_the_plugin_with_another_roles_token_is_told_which_token(server: ServerApp, tmp_path: Path) -> None:
    """The plugin configured with the agents' enrolment token: PERMISSION_DENIED (myshoes retries), and
    the message names the setting that is wrong."""
    from shoes_vz.plugin.host import PluginProcess, host_env
    from shoes_vz.plugin.install import install_plugin
    from shoes_vz.wire import myshoes_pb2 as mpb

    plugin = await asyncio.to_thread(install_plugin, tmp_path / "shoes-vz-plugin")
    env = host_env({"SHOESVZ_SERVER_ADDR": addr(server), "SHOESVZ_TOKEN": ENROLMENT[0][1].removeprefix("Bearer ")})

    def call() -> grpc.RpcError:
        with PluginProcess.launch(plugin, env, stderr=subprocess.DEVNULL) as proc:
            try:
                proc.shoes().DeleteInstance(mpb.DeleteInstanceRequest(cloud_id="shoes-vz-0000000000000000"), timeout=20)
            except grpc.RpcError as e:
                return e
        raise AssertionError("the enrolment token opened ShoesService")

    e = await asyncio.to_thread(call)
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "shoes_token" in (e.details() or "")  # type: ignore[attr-defined]


async def aio_sync_status(addr: str, md: tuple[tuple[str, str], ...], frames: list[bytes]) -> grpc.StatusCode:
    """A Sync the way the agent's grpc.aio client writes it: messages, half-close, then the status."""
    async with grpc.aio.insecure_channel(addr) as ch:
        call = ch.stream_stream(AGENT + "Sync")(metadata=md, timeout=10)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for f in frames:
                await call.write(f)
            await call.done_writing()
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            return e.code()
        return await call.code()


async def test_a_refused_stream_tells_a_client_still_writing_why(server: ServerApp) -> None:
    """grpc.aio's client (the agent's) reported INTERNAL for its own failed write when the server ended a
    stream it was still writing to — most of the time with five messages. The server now takes what the
    client sent (bounded) before it refuses, so the client reads the refusal itself."""
    a = addr(server)
    agent = await Agent(a, "agent-a").enroll()
    hello = apb.SyncRequest(agent_id="agent-a").SerializeToString()
    out_of_bounds = apb.SyncRequest(agent_id="agent-a", runners=[apb.Runner(runner_id="not-hex")]).SerializeToString()
    wrong = BAD_CREDENTIALS["a wrong bearer token"]
    for md, frames, expected in ((wrong, [hello] * 5, grpc.StatusCode.UNAUTHENTICATED),
                                 (MYSHOES, [hello] * 5, grpc.StatusCode.PERMISSION_DENIED)):
        codes = await asyncio.gather(*(aio_sync_status(a, md, frames) for _ in range(30)))
        assert set(codes) == {expected}, (expected, codes)
    for frames in ([out_of_bounds] * 5, [hello, b"\xff\xff\xff\x0f", hello, hello]):
        codes = [await aio_sync_status(a, agent.md, frames) for _ in range(10)]  # one agent: one stream at a time
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
