"""The admin surface's doors (docs/security.md §2, issue 14): AdminService reads take the operator or the
viewer credential, changes the operator's only; every other credential is PERMISSION_DENIED, none or a
wrong one UNAUTHENTICATED, and a refused change changes nothing. Each wrong-role call is performed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from attackers import ENROLMENT, MYSHOES, Agent, Metadata, add_instance, runner, unary, unary_error
from stack_fixtures import bearer, eventually, server_settings

from shoes_vz.server.app import ServerApp
from shoes_vz.wire import admin_pb2 as pb

OPERATOR = "test-operator-token-0123456"
VIEWER = "test-viewer-token-01234567"
ADMIN = "/shoes.vz.admin.v1.AdminService/"
OK, DENIED, UNAUTH = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[ServerApp, Agent, str]]:
    """A server with every role's token, one enrolled agent and one running runner on it."""
    async with ServerApp(server_settings(tmp_path, operator_token=OPERATOR, viewer_token=VIEWER,
                                         add_instance_timeout=5)) as app:
        a = f"127.0.0.1:{app.port}"
        agent = await Agent(a, "agent-a").enroll()
        await agent.register()
        agent.open()
        await eventually(lambda: "agent-a" in app.hub.connections)
        call = asyncio.ensure_future(add_instance(a, "job-1", setup_script="true"))
        cmd = (await agent.next_command()).create_runner
        agent.send([runner(cmd, "agent-a")])
        await call
        yield app, agent, cmd.runner_id
        await agent.close()


def reads() -> list[tuple[str, object]]:
    return [(ADMIN + "ListAgents", pb.ListAgentsRequest()), (ADMIN + "ListRunners", pb.ListRunnersRequest())]


def writes(runner_id: str) -> list[tuple[str, object]]:
    return [(ADMIN + "DrainAgent", pb.DrainAgentRequest(agent_id="agent-a")),
            (ADMIN + "UndrainAgent", pb.UndrainAgentRequest(agent_id="agent-a")),
            (ADMIN + "DeleteRunner", pb.DeleteRunnerRequest(runner=runner_id))]


async def unchanged(app: ServerApp, runner_id: str) -> None:
    """Nothing a refused change could have done: the agent is not drained, the runner not being deleted."""
    [agent] = await app.store.call(app.store.agents)
    assert agent.drained_since is None
    row = await app.store.call(app.store.runner, runner_id)
    assert row is not None and not row.delete_requested and row.deleted_at is None


async def test_wrong_roles_cannot_change_the_fleet(fleet: tuple[ServerApp, Agent, str]) -> None:
    app, agent, runner_id = fleet
    a = f"127.0.0.1:{app.port}"
    callers: dict[str, tuple[Metadata, grpc.StatusCode]] = {
        "viewer": (bearer(VIEWER), DENIED), "myshoes": (MYSHOES, DENIED), "enrollment": (ENROLMENT, DENIED),
        "agent-a": (agent.md, DENIED), "no credentials": ((), UNAUTH), "a wrong token": (bearer("x" * 27), UNAUTH)}
    for who, (md, expected) in callers.items():
        for method, request in writes(runner_id):
            e = await unary_error(a, method, request, md)
            assert e is not None and e.code() == expected, (who, method, e)
            if expected is DENIED:
                assert "operator only" in (e.details() or ""), e.details()
            await unchanged(app, runner_id)
    # and the agent keeps getting placements: nothing was drained
    assert await unary(a, ADMIN + "ListAgents", pb.ListAgentsRequest(), bearer(VIEWER)) == OK


async def test_reads_take_the_operator_or_the_viewer_only(fleet: tuple[ServerApp, Agent, str]) -> None:
    app, agent, runner_id = fleet
    a = f"127.0.0.1:{app.port}"
    for md, expected in ((bearer(OPERATOR), OK), (bearer(VIEWER), OK), (MYSHOES, DENIED), (ENROLMENT, DENIED),
                         (agent.md, DENIED), ((), UNAUTH), (bearer("y" * 27), UNAUTH)):
        for method, request in reads():
            assert await unary(a, method, request, md) == expected, (md, method)


async def test_the_operator_may_change_the_fleet(fleet: tuple[ServerApp, Agent, str]) -> None:
    app, _, runner_id = fleet
    a = f"127.0.0.1:{app.port}"
    for method, request in writes(runner_id):
        assert await unary(a, method, request, bearer(OPERATOR)) == OK, method
    row = await app.store.call(app.store.runner, runner_id)
    assert row is not None and row.delete_requested


async def test_on_loopback_an_unset_operator_token_leaves_the_admin_surface_open(tmp_path: Path) -> None:
    """A local trial (docs/security.md §6): no operator token on loopback → calls act as the operator;
    but other roles' credentials are still their roles (PERMISSION_DENIED)."""
    async with ServerApp(server_settings(tmp_path)) as app:
        a = f"127.0.0.1:{app.port}"
        assert await unary(a, ADMIN + "ListAgents", pb.ListAgentsRequest()) == OK
        assert await unary(a, ADMIN + "DrainAgent", pb.DrainAgentRequest(agent_id="nobody")) == \
            grpc.StatusCode.NOT_FOUND  # it got past the door
        assert await unary(a, ADMIN + "ListAgents", pb.ListAgentsRequest(), MYSHOES) == DENIED


async def test_with_an_operator_token_but_no_viewer_token_loopback_reads_are_open_changes_are_not(
        tmp_path: Path) -> None:
    async with ServerApp(server_settings(tmp_path, operator_token=OPERATOR)) as app:
        a = f"127.0.0.1:{app.port}"
        assert await unary(a, ADMIN + "ListRunners", pb.ListRunnersRequest()) == OK
        e = await unary_error(a, ADMIN + "DrainAgent", pb.DrainAgentRequest(agent_id="agent-a"))
        assert e is not None and e.code() == UNAUTH and "operator_token" in (e.details() or "")


async def test_off_loopback_the_admin_surface_is_never_open(tmp_path: Path) -> None:
    """No operator or viewer token on 0.0.0.0: the admin surface is closed to everyone, not open."""
    async with ServerApp(server_settings(tmp_path, listen="0.0.0.0:0", allow_plaintext=True)) as app:
        a = f"127.0.0.1:{app.port}"
        for method, request in [*reads(), *writes("0123456789abcdef")]:
            assert await unary(a, method, request) == UNAUTH, method
            assert await unary(a, method, request, MYSHOES) == DENIED, method
