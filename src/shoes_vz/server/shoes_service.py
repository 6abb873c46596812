"""ShoesService: what myshoes calls (through the plugin), with myshoes' semantics (DESIGN §3.1).

INVALID_ARGUMENT drops the job forever, so it is used only for input that can never succeed.
No capacity → RESOURCE_EXHAUSTED, not ready → UNAVAILABLE: myshoes retries both. Only the myshoes
side (shoes_token) may call it (docs/security.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc

from shoes_vz.core import ids
from shoes_vz.core.errors import CapacityExhausted, InvalidInput
from shoes_vz.core.logsafe import shown
from shoes_vz.core.resources import normalize_resource_type
from shoes_vz.core.states import Phase
from shoes_vz.server.name_locks import NameLocks
from shoes_vz.server.principal import Role, allow
from shoes_vz.server.scheduler import NoAgents
from shoes_vz.server.store import RunnerRow
from shoes_vz.server.teardown import request_delete
from shoes_vz.wire import shoes_pb2 as pb
from shoes_vz.wire import shoes_pb2_grpc as pbg

if TYPE_CHECKING:
    from shoes_vz.server.app import ServerApp

log = logging.getLogger(__name__)
DEADLINE_MARGIN = 1.0  # seconds kept back to tear down and answer before the caller gives up


class Failed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ShoesService(pbg.ShoesServiceServicer):
    def __init__(self, app: ServerApp) -> None:
        self.app = app
        self.store = app.store
        self.hub = app.hub
        self._names = NameLocks()

    async def AddInstance(self, request: pb.AddInstanceRequest, context: grpc.aio.ServicerContext
                          ) -> pb.AddInstanceResponse:
        await allow(context, Role.MYSHOES)
        try:
            ids.validate_runner_name(request.runner_name)
            ids.validate_setup_script(request.setup_script)
            ids.validate_labels(list(request.labels))
            rtype = normalize_resource_type(request.resource_type, self.app.settings.default_resource_type)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        budget = self.app.settings.add_instance_timeout
        which = f"the server's add_instance_timeout ({budget:g}s)"
        remaining = context.time_remaining()
        if remaining is not None and remaining - DEADLINE_MARGIN < budget:
            budget = remaining - DEADLINE_MARGIN
            which = f"the caller's deadline ({remaining:.0f}s, less {DEADLINE_MARGIN:g}s to answer)"
        deadline = time.monotonic() + max(0.0, budget)
        try:
            async with self._names.hold(request.runner_name):  # one job name, one runner: myshoes retries
                row = await self._add(request, rtype, deadline, which)
        except Failed as e:
            await context.abort(e.code, str(e))
        return pb.AddInstanceResponse(cloud_id=ids.cloud_id(row.runner_id), shoes_type=ids.SHOES_TYPE,
                                      ip_address=row.ip_address, resource_type=row.resource_type)

    async def _add(self, request: pb.AddInstanceRequest, rtype: str, deadline: float, which: str) -> RunnerRow:
        existing = await self.store.call(self.store.live_runner_by_name, request.runner_name)
        if existing is not None and (existing.state == Phase.ERROR.value or existing.delete_requested):
            await self._delete(existing)  # never repair a failed runner: replace it
            existing = None
        if existing is not None:
            log.info("AddInstance %s: runner %s exists (%s)", request.runner_name, existing.runner_id,
                     existing.state)
            return await self._wait_running(existing.runner_id, deadline, which)
        try:
            row, cmd = await self.app.scheduler.reserve(request.runner_name, rtype, request.setup_script,
                                                        list(request.labels))
        except InvalidInput as e:
            raise Failed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        except CapacityExhausted as e:
            raise Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from e
        except NoAgents as e:
            raise Failed(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        log.info("AddInstance %s: runner %s on agent %s (%s)", request.runner_name, row.runner_id,
                 row.agent_id, row.template)
        await self.hub.send([cmd])
        return await self._wait_running(row.runner_id, deadline, which)

    async def _wait_running(self, runner_id: str, deadline: float, which: str) -> RunnerRow:
        """Until the runner is SSH-ready with setup_script started; tear down on failure/deadline."""
        while True:
            changed = self.hub.event(runner_id)
            row = await self.store.call(self.store.runner, runner_id)
            assert row is not None
            if row.state == Phase.RUNNING.value and row.deleted_at is None:
                return row
            if row.deleted_at is not None or row.state in (Phase.ERROR.value, Phase.TEARING_DOWN.value):
                if row.deleted_at is None:
                    await self._delete(row)
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if row.capacity_error else grpc.StatusCode.UNAVAILABLE
                raise Failed(code, f"runner {runner_id} failed: {row.error or row.state}")
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                await self._delete(row)
                raise Failed(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"runner {runner_id} not ready within {which} (still {row.state}); torn down") from None

    async def _delete(self, row: RunnerRow) -> None:
        await request_delete(self.store, self.hub, row)

    async def DeleteInstance(self, request: pb.DeleteInstanceRequest, context: grpc.aio.ServicerContext
                             ) -> pb.DeleteInstanceResponse:
        await allow(context, Role.MYSHOES)
        runner_id = ids.runner_id_from_cloud_id(request.cloud_id)
        row = await self.store.call(self.store.runner, runner_id) if runner_id else None
        if row is None or row.deleted_at is not None or row.delete_requested:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no runner {shown(request.cloud_id)}")
        assert row is not None
        log.info("DeleteInstance %s (%s)", request.cloud_id, row.runner_name)
        await self._delete(row)
        return pb.DeleteInstanceResponse()
