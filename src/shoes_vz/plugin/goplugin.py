"""The services a hashicorp/go-plugin gRPC host expects besides the application's own.

- `grpc.health.v1.Health`: service "plugin" (go-plugin's `GRPCServiceName`) is SERVING.
- `plugin.GRPCController/Shutdown`: `Client.Kill()` calls it and then waits up to 2 s for the process
  to exit before SIGKILL; we answer and exit at once.
- `plugin.GRPCStdio/StreamStdio`: the host opens it right after connecting; we never write to the
  host through it (logs go to stderr), so it stays open and empty until shutdown.
- `plugin.GRPCBroker/StartStream`: the host starts it in the background; held open, never used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoes_vz.wire import goplugin_pb2, goplugin_pb2_grpc

log = logging.getLogger("shoes_vz.plugin.goplugin")

HEALTH_SERVICE_NAME = "plugin"


class Controller(goplugin_pb2_grpc.GRPCControllerServicer):
    def __init__(self, shutdown: asyncio.Event) -> None:
        self._shutdown = shutdown

    async def Shutdown(
        self, request: goplugin_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> goplugin_pb2.Empty:
        log.debug("shutdown requested by the host")
        self._shutdown.set()
        return goplugin_pb2.Empty()


class Stdio(goplugin_pb2_grpc.GRPCStdioServicer):
    def __init__(self, shutdown: asyncio.Event) -> None:
        self._shutdown = shutdown

    async def StreamStdio(  # type: ignore[override]
        self, request: object, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[goplugin_pb2.StdioData]:
        await self._shutdown.wait()
        return
        yield  # an (empty) async generator: a server-streaming handler


class Broker(goplugin_pb2_grpc.GRPCBrokerServicer):
    async def StartStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[goplugin_pb2.ConnInfo], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[goplugin_pb2.ConnInfo]:
        async for info in request_iterator:
            log.debug("ignoring broker connection info", extra={"kv": {"service_id": info.service_id}})
        return
        yield


async def add_goplugin_services(
    server: grpc.aio.Server, shutdown: asyncio.Event, *, controller: bool = True
) -> None:
    """Register Health ("plugin" = SERVING), GRPCStdio, GRPCBroker and, unless disabled, GRPCController."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", HEALTH_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    goplugin_pb2_grpc.add_GRPCStdioServicer_to_server(Stdio(shutdown), server)
    goplugin_pb2_grpc.add_GRPCBrokerServicer_to_server(Broker(), server)
    if controller:
        goplugin_pb2_grpc.add_GRPCControllerServicer_to_server(Controller(shutdown), server)
