"""AgentService: registration, the event-driven Sync stream, reconciliation (DESIGN §3.2, §8)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from shoes_vz.core.conditions import HostCondition
from shoes_vz.core.errors import InvalidInput
from shoes_vz.core.resources import canonical_resource_type
from shoes_vz.core.states import Phase
from shoes_vz.server.scheduler import new_request_id
from shoes_vz.server.store import Command, HeldTemplate
from shoes_vz.wire import agent_pb2 as pb
from shoes_vz.wire import agent_pb2_grpc as pbg
from shoes_vz.wire.convert import state_to_phase, wire_to_conditions, wire_to_guest

if TYPE_CHECKING:
    from shoes_vz.server.app import ServerApp

log = logging.getLogger(__name__)
CAPACITY_BLOCK_SECONDS = 60.0


def held_templates(agent_id: str, report: list[pb.Template]) -> list[HeldTemplate]:
    """The wire's templates as stored; resource types in myshoes' spelling (unknown ones dropped)."""
    held = []
    for t in report:
        types = []
        for rt in t.resource_types:
            try:
                types.append(canonical_resource_type(rt))
            except InvalidInput:
                log.warning("agent %s: template %s lists unknown resource type %r: ignored", agent_id, t.name, rt)
        held.append(HeldTemplate(
            name=t.name, version=t.version, digest=t.digest, resource_types=tuple(types),
            cpu_cores=t.cpu_cores, memory_bytes=t.memory_bytes, warm_slots=t.warm_slots,
            free_warm_slots=t.free_warm_slots,
        ))
    return held


def describe_templates(templates: list[HeldTemplate]) -> str:
    return ", ".join(f"{t.name} v{t.version} ({t.digest[:12] or 'no digest'}, {t.free_warm_slots}/"
                     f"{t.warm_slots} warm free)" for t in templates) or "none"


class AgentService(pbg.AgentServiceServicer):
    def __init__(self, app: ServerApp) -> None:
        self.app = app
        self.store = app.store
        self.hub = app.hub
        self._orphan_deletes: set[str] = set()

    async def RegisterAgent(self, request: pb.RegisterAgentRequest, context: grpc.aio.ServicerContext
                            ) -> pb.RegisterAgentResponse:
        if not request.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        templates = held_templates(request.agent_id, list(request.templates))
        host = {"os": request.host.os, "arch": request.host.arch, "driver": request.host.driver,
                "agent_version": request.host.agent_version}
        await self.store.call(self.store.upsert_agent, request.agent_id, request.hostname,
                              request.capacity.max_runners or 2, templates, host)
        self.app.scheduler.templates_reported(request.agent_id)
        log.info("agent %s (%s) registered: %d slots; templates: %s", request.agent_id, request.hostname,
                 request.capacity.max_runners or 2, describe_templates(templates))
        return pb.RegisterAgentResponse(agent_id=request.agent_id,
                                        sync_interval_seconds=max(1, int(self.app.settings.sync_interval)))

    async def Sync(self, request_iterator: AsyncIterator[pb.SyncRequest], context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[pb.SyncResponse]:
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        agent_id = first.agent_id
        conn = self.hub.attach(agent_id, context.peer())
        await self.store.call(self.store.set_agent_online, agent_id, True)
        log.info("agent %s connected", agent_id)
        await self._process(first)
        await self.hub.send(await self.store.call(self.store.pending_commands, agent_id))

        async def read() -> None:
            try:
                async for req in it:
                    await self._process(req)
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
                await self.store.call(self.store.set_agent_online, agent_id, False)
                log.info("agent %s disconnected", agent_id)
        if conn.replaced_by:  # the agent at the other end learns why its stream ended
            await context.abort(grpc.StatusCode.ABORTED,
                                f"a newer Sync stream for agent id {agent_id} (from {conn.replaced_by}) replaced "
                                "this one; if that is not this agent reconnecting, two agents share one agent id "
                                "(give each its own agent.state_dir)")

    async def _process(self, req: pb.SyncRequest) -> None:
        agent_id = req.agent_id
        await self.store.call(self.store.touch_agent, agent_id)
        if req.HasField("conditions"):  # before the runners: a failure it caused must not be placed here again
            await self._conditions_report(agent_id, wire_to_conditions(req.conditions))
        if req.HasField("templates"):
            await self._templates_report(agent_id, held_templates(agent_id, list(req.templates.templates)))
        for ack in req.acks:
            await self._ack(ack)
        reported = set()
        for r in req.runners:
            reported.add(r.runner_id)
            await self._runner_report(agent_id, r)
        for row in await self.store.call(self.store.live_runners, agent_id):
            if row.runner_id not in reported and await self.store.call(self.store.create_acked, row.runner_id):
                # known to us, gone from the agent: it was torn down (or lost with its host)
                await self.store.call(self.store.mark_gone, row.runner_id)
                self.hub.changed(row.runner_id)

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
                log.error("agent %s out of placement: %s", agent_id, c.describe())
        for reason in before.keys() - now.keys():
            log.info("agent %s condition %s cleared%s", agent_id, reason,
                     "" if now else ": back in placement")
        if "degraded" in before.keys() - now.keys():  # a probe VM started there: its capacity block is stale
            await self.store.call(self.store.block_agent, agent_id, 0.0)

    async def _ack(self, ack: pb.CommandAck) -> None:
        cmd = await self.store.call(self.store.ack, ack.request_id, ack.ok, ack.error)
        if cmd is None or ack.ok:
            return
        if cmd.kind == "create":
            capacity = "capacity" in ack.error
            log.warning("agent %s refused runner %s: %s", cmd.agent_id, cmd.runner_id, ack.error)
            await self.store.call(self.store.update_runner, cmd.runner_id, state=Phase.ERROR.value,
                                  error=ack.error, capacity_error=capacity)
            await self.store.call(self.store.mark_gone, cmd.runner_id)
            self.hub.changed(cmd.runner_id)

    async def _runner_report(self, agent_id: str, r: pb.Runner) -> None:
        row = await self.store.call(self.store.runner, r.runner_id)
        if row is None or row.deleted_at is not None or row.agent_id != agent_id:
            await self._delete_orphan(agent_id, r.runner_id)
            return
        phase = state_to_phase(r.state)
        timings = {"clone": r.timings.clone_seconds, "boot_to_ssh": r.timings.boot_to_ssh_seconds,
                   "total": r.timings.total_seconds}
        if phase == Phase.RUNNING and row.state != Phase.RUNNING.value:
            self.app.metrics.observe(timings)
        if r.capacity_error and not row.capacity_error:
            await self.store.call(self.store.block_agent, agent_id, time.time() + CAPACITY_BLOCK_SECONDS)
        changed = (phase.value, r.ip_address, wire_to_guest(r.guest_runner_state).value, r.error_message) != (
            row.state, row.ip_address, row.guest_state, row.error)
        if changed:
            await self.store.call(
                self.store.update_runner, r.runner_id, state=phase.value, ip_address=r.ip_address,
                guest_state=wire_to_guest(r.guest_runner_state).value, error=r.error_message,
                mac_address=r.mac_address, timings=timings, capacity_error=r.capacity_error,
            )
            self.hub.changed(r.runner_id)

    async def _delete_orphan(self, agent_id: str, runner_id: str) -> None:
        if runner_id in self._orphan_deletes:
            return
        self._orphan_deletes.add(runner_id)
        log.warning("agent %s runs unknown runner %s: deleting the orphan", agent_id, runner_id)
        cmd = Command(new_request_id(), agent_id, runner_id, "delete", {})
        await self.store.call(self.store.request_delete, runner_id, cmd)
        await self.hub.send([cmd])
