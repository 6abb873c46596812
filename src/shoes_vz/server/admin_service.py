"""AdminService: the fleet for operators (`shoes-vz agents`, `runners`, `drain`, `undrain`, `delete`).

Reading is for the operator and the viewer credential; changing anything (drain, undrain, delete) for
the operator only (docs/security.md §2). What it answers comes from server/fleet.py, the queries the
status page shows too.
"""

from __future__ import annotations

import logging
import time

import grpc

from shoes_vz.core import ids
from shoes_vz.core.conditions import HostCondition
from shoes_vz.core.logsafe import shown
from shoes_vz.server.fleet import AgentView, Fleet
from shoes_vz.server.hub import Hub
from shoes_vz.server.principal import Role, allow
from shoes_vz.server.store import RunnerRow, Store
from shoes_vz.server.teardown import request_delete
from shoes_vz.wire import admin_pb2 as pb
from shoes_vz.wire import admin_pb2_grpc as pbg

log = logging.getLogger(__name__)
READ = (Role.OPERATOR, Role.VIEWER)
MAX_REF_CHARS = 200  # a runner reference: an id, a cloud id or a runner name (at most 128)


def _ts(seconds: float, into: object) -> None:
    into.FromNanoseconds(int(seconds * 1e9))  # type: ignore[attr-defined]


def _condition(c: HostCondition) -> pb.Condition:
    m = pb.Condition(reason=c.reason, message=c.message)
    _ts(c.since, m.since)
    return m


def agent_message(a: AgentView) -> pb.AgentInfo:
    m = pb.AgentInfo(
        agent_id=a.agent_id, hostname=a.hostname, driver=a.driver, agent_version=a.agent_version, os=a.os,
        arch=a.arch, online=a.online, drained=a.drained, conditions=[_condition(c) for c in a.conditions],
        max_runners=a.max_runners, running_runners=a.runners,
        templates=[pb.HeldTemplate(name=t.name, version=t.version, digest=t.digest,
                                   resource_types=list(t.resource_types), warm_slots=t.warm_slots,
                                   free_warm_slots=t.free_warm_slots) for t in a.templates])
    _ts(a.last_seen, m.last_seen)
    return m


def runner_message(r: RunnerRow, now: float) -> pb.RunnerInfo:
    end = r.deleted_at if r.deleted_at is not None else now
    m = pb.RunnerInfo(
        runner_id=r.runner_id, runner_name=r.runner_name, cloud_id=ids.cloud_id(r.runner_id), agent_id=r.agent_id,
        template=r.template, resource_type=r.resource_type, state=r.state, guest_state=r.guest_state,
        ip_address=r.ip_address, age_seconds=max(0.0, end - r.created_at), error=r.error,
        reap_reason=r.reap_reason, delete_requested=r.delete_requested, labels=r.labels,
        timings=pb.RunnerTimings(clone_seconds=r.timings.get("clone", 0.0),
                                 boot_to_ssh_seconds=r.timings.get("boot_to_ssh", 0.0),
                                 total_seconds=r.timings.get("total", 0.0)))
    _ts(r.created_at, m.created_at)
    _ts(r.updated_at, m.updated_at)
    return m


READ_METHODS = ("ListAgents", "ListRunners")
WRITE_METHODS = ("DrainAgent", "UndrainAgent", "DeleteRunner")


def admin_open_methods(service: str, operator_token: str | None, viewer_token: str | None) -> dict[str, Role]:
    """On loopback a role whose token is unset is open (a local trial, docs/security.md §6): without an
    operator token every call acts as the operator; without a viewer token the reads act as the viewer."""
    if not operator_token:
        return {f"/{service}/{m}": Role.OPERATOR for m in (*READ_METHODS, *WRITE_METHODS)}
    if not viewer_token:
        return {f"/{service}/{m}": Role.VIEWER for m in READ_METHODS}
    return {}


class AdminService(pbg.AdminServiceServicer):
    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.fleet = Fleet(store)

    async def ListAgents(self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListAgentsResponse:
        await allow(context, *READ)
        agents = await self.store.call(self.fleet.agents)
        return pb.ListAgentsResponse(agents=[agent_message(a) for a in agents])

    async def ListRunners(self, request: pb.ListRunnersRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ListRunnersResponse:
        await allow(context, *READ)
        if request.agent_id and not ids.AGENT_ID_RE.fullmatch(request.agent_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not an agent id: {shown(request.agent_id)}")
        limit = min(max(request.limit, 0), 1000)
        rows = await self.store.call(self.fleet.runners, request.include_gone, request.agent_id, limit)
        now = time.time()
        return pb.ListRunnersResponse(runners=[runner_message(r, now) for r in rows])

    async def DrainAgent(self, request: pb.DrainAgentRequest, context: grpc.aio.ServicerContext
                         ) -> pb.DrainAgentResponse:
        agent, changed = await self._set_drained(request.agent_id, True, context)
        return pb.DrainAgentResponse(agent=agent, changed=changed)

    async def UndrainAgent(self, request: pb.UndrainAgentRequest, context: grpc.aio.ServicerContext
                           ) -> pb.UndrainAgentResponse:
        agent, changed = await self._set_drained(request.agent_id, False, context)
        return pb.UndrainAgentResponse(agent=agent, changed=changed)

    async def _set_drained(self, agent_id: str, drained: bool, context: grpc.aio.ServicerContext
                           ) -> tuple[pb.AgentInfo, bool]:
        await allow(context, Role.OPERATOR)
        changed = await self.store.call(self.fleet.set_drained, agent_id, drained) \
            if ids.AGENT_ID_RE.fullmatch(agent_id) else None
        if changed is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no agent {shown(agent_id)} has registered")
        if changed:
            log.warning("agent %s %s by an operator%s", agent_id, "drained" if drained else "undrained",
                        ": running jobs finish, no new runners" if drained else ": placements resume")
        view = await self.store.call(self.fleet.agent, agent_id)
        assert view is not None
        return agent_message(view), bool(changed)

    async def DeleteRunner(self, request: pb.DeleteRunnerRequest, context: grpc.aio.ServicerContext
                           ) -> pb.DeleteRunnerResponse:
        await allow(context, Role.OPERATOR)
        ref = request.runner
        row = await self.store.call(self.fleet.find_runner, ref) if 0 < len(ref) <= MAX_REF_CHARS else None
        if row is None or row.deleted_at is not None or row.delete_requested:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no live runner {shown(ref)} (or its delete was "
                                "asked for already)")
        assert row is not None
        log.warning("runner %s (%s) on agent %s: deleted by an operator", row.runner_id, shown(row.runner_name),
                    row.agent_id)
        await request_delete(self.store, self.hub, row)
        after = await self.store.call(self.store.runner, row.runner_id)
        assert after is not None
        return pb.DeleteRunnerResponse(runner=runner_message(after, time.time()))


__all__ = ["AdminService", "admin_open_methods", "agent_message", "runner_message"]
