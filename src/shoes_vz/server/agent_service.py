"""AgentService: enrolment, registration, the event-driven Sync stream, reconciliation (DESIGN §3.2, §8).

Every call is an enrolled agent's (server/principal.py, docs/security.md §3) but Enroll, which is
the enrolment token's. A message is checked whole before anything is applied: its limits
(server/limits.py → INVALID_ARGUMENT) and that it speaks only for its sender (server/binding.py →
PERMISSION_DENIED); a Sync stream that breaks either ends with that status, having changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from shoes_vz.core.conditions import HostCondition
from shoes_vz.core.errors import Forbidden, InvalidInput
from shoes_vz.core.host_defaults import HOST_VM_LIMIT
from shoes_vz.core.logsafe import shown
from shoes_vz.core.resources import canonical_resource_type
from shoes_vz.core.states import Phase
from shoes_vz.server import limits
from shoes_vz.server.auth import RefusalLog, drain, peer_host
from shoes_vz.server.binding import Refused, check_agent_id, check_report
from shoes_vz.server.enrollment import Enrollment
from shoes_vz.server.orphans import OrphanDeletes
from shoes_vz.server.principal import Role, allow, current, deny
from shoes_vz.server.store import HeldTemplate
from shoes_vz.wire import agent_pb2 as pb
from shoes_vz.wire import agent_pb2_grpc as pbg
from shoes_vz.wire.convert import state_to_phase, wire_to_conditions, wire_to_guest

if TYPE_CHECKING:
    from shoes_vz.server.app import ServerApp

log = logging.getLogger(__name__)
CAPACITY_BLOCK_SECONDS = 60.0


def held_templates(report: list[pb.Template]) -> tuple[list[HeldTemplate], set[str]]:
    """The wire's templates as stored, resource types in myshoes' spelling; and the unknown types dropped."""
    held, unknown = [], set()
    for t in report:
        types = []
        for rt in t.resource_types:
            try:
                types.append(canonical_resource_type(rt))
            except InvalidInput:
                unknown.add(rt)
        held.append(HeldTemplate(
            name=t.name, version=t.version, digest=t.digest, resource_types=tuple(types),
            cpu_cores=t.cpu_cores, memory_bytes=t.memory_bytes, warm_slots=t.warm_slots,
            free_warm_slots=t.free_warm_slots,
        ))
    return held, unknown


def describe_templates(templates: list[HeldTemplate], shown_at_most: int = 8) -> str:
    said = ", ".join(f"{t.name} v{t.version} ({t.digest[:12] or 'no digest'}, {t.free_warm_slots}/"
                     f"{t.warm_slots} warm free)" for t in templates[:shown_at_most]) or "none"
    return said + (f" (+{len(templates) - shown_at_most} more)" if len(templates) > shown_at_most else "")


def slots_for(agent_id: str, capacity: int, driver: str) -> int:
    """The runners the server places on a host: what it offers (0: the default 2), never more than
    Apple's limit on a vz host."""
    slots = capacity or HOST_VM_LIMIT
    if driver == "vz" and slots > HOST_VM_LIMIT:
        log.warning("agent %s offers %d runners on vz; Apple allows %d macOS guests at once: placing at most %d",
                    agent_id, slots, HOST_VM_LIMIT, HOST_VM_LIMIT)
        return HOST_VM_LIMIT
    return slots


class AgentService(pbg.AgentServiceServicer):
    def __init__(self, app: ServerApp) -> None:
        self.app = app
        self.store = app.store
        self.hub = app.hub
        self.enrollment = Enrollment(app.store)
        self.orphans = OrphanDeletes(app.settings.command_resend_after)
        self.refusals = RefusalLog()
        self._dropped_types: dict[str, frozenset[str]] = {}

    async def Enroll(self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext) -> pb.EnrollResponse:
        await allow(context, Role.ENROLLMENT)
        try:
            limits.check_enroll(request)
            secret = await self.enrollment.enroll(request.agent_id, request.hostname)
        except InvalidInput as e:
            await deny(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Forbidden as e:
            self.refusals.note(f"enroll:{peer_host(context.peer())}", f"refused to enrol agent "
                               f"{shown(request.agent_id)} again (from {context.peer()}): it is enrolled already")
            await deny(context, grpc.StatusCode.PERMISSION_DENIED, str(e))
        return pb.EnrollResponse(agent_id=request.agent_id, agent_secret=secret)

    async def RegisterAgent(self, request: pb.RegisterAgentRequest, context: grpc.aio.ServicerContext
                            ) -> pb.RegisterAgentResponse:
        agent_id = (await allow(context, Role.AGENT)).agent_id
        try:
            limits.check_register(request)
            check_agent_id(agent_id, request.agent_id, "RegisterAgent")
        except InvalidInput as e:
            await self._refuse_call(context, agent_id, grpc.StatusCode.INVALID_ARGUMENT, str(e), "register")
        except Refused as e:
            await self._refuse_call(context, agent_id, grpc.StatusCode.PERMISSION_DENIED, str(e), e.subject, e.detail)
        templates, unknown = held_templates(list(request.templates))
        self._say_dropped(agent_id, unknown)
        host = {"os": request.host.os, "arch": request.host.arch, "driver": request.host.driver,
                "agent_version": request.host.agent_version}
        slots = slots_for(agent_id, request.capacity.max_runners, request.host.driver)
        before = [(a.hostname, a.max_runners, a.templates) for a in await self.store.call(self.store.agents)
                  if a.agent_id == agent_id]
        await self.store.call(self.store.upsert_agent, agent_id, request.hostname, slots, templates, host)
        self.app.scheduler.templates_reported(agent_id)
        level = logging.DEBUG if before == [(request.hostname, slots, templates)] else logging.INFO  # said on change
        log.log(level, "agent %s (%s) registered: %d slots; templates: %s", agent_id, request.hostname or "?", slots,
                describe_templates(templates))
        return pb.RegisterAgentResponse(agent_id=agent_id,
                                        sync_interval_seconds=max(1, int(self.app.settings.sync_interval)))

    async def _refuse_call(self, context: grpc.aio.ServicerContext, agent_id: str, code: grpc.StatusCode,
                           message: str, subject: str, detail: str = "") -> None:
        # keyed by agent and kind, never by the refused value: varied junk is still one line a minute
        self.refusals.note(f"{agent_id}:{subject}", f"refused a call of agent {agent_id} ({code.name}): "
                           f"{detail or message}")
        await deny(context, code, message)

    async def Sync(self, request_iterator: AsyncIterator[pb.SyncRequest], context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[pb.SyncResponse]:
        it = request_iterator.__aiter__()
        if current().role is not Role.AGENT:
            await drain(it)  # each refusal of a stream first takes what the client sent (auth.drain)
        agent_id = (await allow(context, Role.AGENT)).agent_id
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        refused = await self._check(agent_id, first)  # before the stream is attached: it displaces nothing
        if refused is not None:
            await drain(it)
            await self._refuse_call(context, agent_id, *refused)
        conn = self.hub.attach(agent_id, context.peer())
        await self.store.call(self.store.set_agent_online, agent_id, True)
        log.info("agent %s connected", agent_id)
        await self._process(agent_id, first)
        await self.hub.send(await self.store.call(self.store.pending_commands, agent_id))
        ended: list[tuple[grpc.StatusCode, str, str, str]] = []

        async def read() -> None:
            try:
                async for req in it:
                    refused = await self._check(agent_id, req)
                    if refused is not None:
                        ended.append(refused)
                        return
                    await self._process(agent_id, req)
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("agent %s: bad sync message", agent_id)
            finally:
                conn.close()

        reader = asyncio.create_task(read())
        try:
            while True:
                msg = await conn.queue.get()
                if msg is None:
                    break
                yield msg
        finally:
            reader.cancel()
            if self.hub.detach(conn):
                self.orphans.forget(agent_id)
                await self.store.call(self.store.set_agent_online, agent_id, False)
                log.info("agent %s disconnected", agent_id)
        if ended:
            await drain(it)
            await self._refuse_call(context, agent_id, *ended[0])
        if conn.replaced_by:  # the agent at the other end learns why its stream ended
            await context.abort(grpc.StatusCode.ABORTED,
                                f"a newer Sync stream for agent id {agent_id} (from {conn.replaced_by}) replaced "
                                "this one; if that is not this agent reconnecting, two agents share one agent id "
                                "(give each its own agent.state_dir)")

    async def _check(self, agent_id: str, req: pb.SyncRequest) -> tuple[grpc.StatusCode, str, str, str] | None:
        """Why `req` is refused whole (code, message, log subject, log detail), or None."""
        try:
            limits.check_sync(req)
            await check_report(self.store, agent_id, req)
        except InvalidInput as e:
            return grpc.StatusCode.INVALID_ARGUMENT, str(e), "sync", ""
        except Refused as e:
            return grpc.StatusCode.PERMISSION_DENIED, str(e), e.subject, e.detail
        return None

    async def _process(self, agent_id: str, req: pb.SyncRequest) -> None:
        await self.store.call(self.store.touch_agent, agent_id)
        if req.HasField("conditions"):  # before the runners: a failure it caused must not be placed here again
            await self._conditions_report(agent_id, [
                HostCondition(c.reason, limits.capped(c.message, limits.MAX_CONDITION_CHARS), c.since)
                for c in wire_to_conditions(req.conditions)])
        if req.HasField("templates"):
            templates, unknown = held_templates(list(req.templates.templates))
            self._say_dropped(agent_id, unknown)
            await self._templates_report(agent_id, templates)
        for ack in req.acks:
            await self._ack(agent_id, ack)
        reported = set()
        orphans = []
        for r in req.runners:
            reported.add(r.runner_id)
            if not await self._runner_report(agent_id, r):
                orphans.append(r.runner_id)
        await self._delete_orphans(agent_id, orphans)
        for row in await self.store.call(self.store.live_runners, agent_id):
            if row.runner_id not in reported and await self.store.call(self.store.create_acked, row.runner_id):
                # known to us, gone from the agent: it was torn down (or lost with its host)
                await self.store.call(self.store.mark_gone, row.runner_id)
                self.hub.changed(row.runner_id)

    def _say_dropped(self, agent_id: str, unknown: set[str]) -> None:
        """Resource types no server knows, said once per change (not once per type, template and report)."""
        dropped = frozenset(unknown)
        if dropped and self._dropped_types.get(agent_id) != dropped:
            names = ", ".join(shown(t, 32) for t in sorted(dropped)[:10])
            more = f" (+{len(dropped) - 10} more)" if len(dropped) > 10 else ""
            log.warning("agent %s: its templates list resource types this server does not know, ignored: %s%s",
                        agent_id, names, more)
        self._dropped_types[agent_id] = dropped

    async def _templates_report(self, agent_id: str, templates: list[HeldTemplate]) -> None:
        """A template frozen or removed while the agent runs, or a warm slot taken or refilled."""
        before = {(t.name, t.digest) for a in await self.store.call(self.store.agents) if a.agent_id == agent_id
                  for t in a.templates}
        await self.store.call(self.store.set_agent_templates, agent_id, templates)
        self.app.scheduler.templates_reported(agent_id)
        level = logging.INFO if before != {(t.name, t.digest) for t in templates} else logging.DEBUG
        log.log(level, "agent %s templates: %s", agent_id, describe_templates(templates))

    async def _conditions_report(self, agent_id: str, conditions: list[HostCondition]) -> None:
        """Kept with the agent (the scheduler reads them); each change logged once."""
        before = {c.reason: c for a in await self.store.call(self.store.agents) if a.agent_id == agent_id
                  for c in a.conditions}
        now = {c.reason: c for c in conditions}
        if before.keys() == now.keys() and all(before[r].message == now[r].message for r in now):
            return
        await self.store.call(self.store.set_agent_conditions, agent_id, conditions)
        for reason, c in now.items():
            if reason not in before or before[reason].message != c.message:
                log.error("agent %s out of placement: %s", agent_id, shown(c.describe(), 300))
        for reason in before.keys() - now.keys():
            log.info("agent %s condition %s cleared%s", agent_id, reason,
                     "" if now else ": back in placement")
        if "degraded" in before.keys() - now.keys():  # a probe VM started there: its capacity block is stale
            await self.store.call(self.store.block_agent, agent_id, 0.0)

    async def _ack(self, agent_id: str, ack: pb.CommandAck) -> None:
        error = limits.capped(ack.error, limits.MAX_ERROR_CHARS)
        cmd = await self.store.call(self.store.ack, ack.request_id, agent_id, ack.ok, error)
        if cmd is None or ack.ok:
            return
        if cmd.kind == "create":
            capacity = "capacity" in ack.error
            log.warning("agent %s refused runner %s: %s", cmd.agent_id, cmd.runner_id, shown(ack.error, 300))
            await self.store.call(self.store.update_runner, cmd.runner_id, state=Phase.ERROR.value,
                                  error=error, capacity_error=capacity)
            await self.store.call(self.store.mark_gone, cmd.runner_id)
            self.hub.changed(cmd.runner_id)

    async def _runner_report(self, agent_id: str, r: pb.Runner) -> bool:
        """Apply the report of one of the agent's runners; False when the server does not know it (or
        deleted it): an orphan, to be deleted. (Another agent's runner never gets here: binding.py.)"""
        row = await self.store.call(self.store.runner, r.runner_id)
        if row is None or row.deleted_at is not None:
            return False
        if row.agent_id != agent_id:
            return True
        phase = state_to_phase(r.state)
        timings = {"clone": r.timings.clone_seconds, "boot_to_ssh": r.timings.boot_to_ssh_seconds,
                   "total": r.timings.total_seconds}
        if phase == Phase.RUNNING and row.state != Phase.RUNNING.value:
            self.app.metrics.observe(timings)
        if r.capacity_error and not row.capacity_error:
            await self.store.call(self.store.block_agent, agent_id, time.time() + CAPACITY_BLOCK_SECONDS)
        error = limits.capped(r.error_message, limits.MAX_ERROR_CHARS)
        changed = (phase.value, r.ip_address, wire_to_guest(r.guest_runner_state).value, error) != (
            row.state, row.ip_address, row.guest_state, row.error)
        if changed:
            await self.store.call(
                self.store.update_runner, r.runner_id, state=phase.value, ip_address=r.ip_address,
                guest_state=wire_to_guest(r.guest_runner_state).value, error=error,
                mac_address=r.mac_address, timings=timings, capacity_error=r.capacity_error,
            )
            self.hub.changed(r.runner_id)
        return True

    async def _delete_orphans(self, agent_id: str, runner_ids: list[str]) -> None:
        commands, new = self.orphans.due(agent_id, runner_ids)
        if new:
            names = ", ".join(new[:5]) + (f" (+{len(new) - 5} more)" if len(new) > 5 else "")
            self.refusals.note(f"{agent_id}:orphans", f"agent {agent_id} runs {len(new)} runner(s) this server does "
                               f"not know or deleted: {names}; deleting them")
        await self.hub.send(commands)
