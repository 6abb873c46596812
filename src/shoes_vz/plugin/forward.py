"""`whywaita.myshoes.Shoes` served by forwarding each call to the server's `ShoesService`.

What each answer means to myshoes (reference myshoes-plugin.md §1, DESIGN §3.1):
- INVALID_ARGUMENT on AddInstance makes myshoes drop the job forever: it is returned only when the
  server says so (input no retry can fix) or for a resource_type number this plugin does not know.
- NOT_FOUND on DeleteInstance means "already gone": passed through unchanged.
- Every other server status passes through with its code; a server we cannot reach is UNAVAILABLE.
  myshoes retries all of these.
- The caller's deadline becomes the deadline of the forwarded call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NoReturn, TypeVar, cast

import grpc
import grpc.aio

from shoes_vz.core.resources import ALIASES
from shoes_vz.wire import myshoes_pb2, myshoes_pb2_grpc, shoes_pb2, shoes_pb2_grpc

log = logging.getLogger("shoes_vz.plugin.forward")

RT = myshoes_pb2.ResourceType
# myshoes' enum ↔ myshoes' names (whywaita/myshoes:pkg/datastore/resource_type.go)
ENUM_TO_NAME: dict[myshoes_pb2.ResourceType, str] = {
    RT.Nano: "nano",
    RT.Micro: "micro",
    RT.Small: "small",
    RT.Medium: "medium",
    RT.Large: "large",
    RT.XLarge: "xlarge",
    RT.XLarge2: "2xlarge",
    RT.XLarge3: "3xlarge",
    RT.XLarge4: "4xlarge",
}
NAME_TO_ENUM: dict[str, myshoes_pb2.ResourceType] = {name: value for value, name in ENUM_TO_NAME.items()}

_Resp = TypeVar("_Resp")
NO_DEADLINE_S = 1e9  # grpc reports "no deadline" as ~2**63 ns


class UnknownResourceType(ValueError):
    pass


def resource_type_name(value: int, default: str | None) -> str:
    """The name sent to the server. Unknown → `default`, or "" so the server applies its default."""
    if value == RT.Unknown:
        return default or ""
    try:
        return ENUM_TO_NAME[cast(myshoes_pb2.ResourceType, value)]
    except KeyError:
        raise UnknownResourceType(
            f"resource_type {value} is not a myshoes resource type this plugin knows "
            f"(0..{max(ENUM_TO_NAME)}); upgrade shoes-vz-plugin"
        ) from None


def resource_type_enum(name: str) -> myshoes_pb2.ResourceType:
    """The enum for a server's name; Unknown for "" or a name myshoes has no value for."""
    name = name.strip().lower()
    return NAME_TO_ENUM.get(ALIASES.get(name, name), cast(myshoes_pb2.ResourceType, RT.Unknown))


class ShoesForwarder(myshoes_pb2_grpc.ShoesServicer):
    def __init__(
        self,
        stub: shoes_pb2_grpc.ShoesServiceStub,
        *,
        server_addr: str,
        token: str | None = None,
        default_resource_type: str | None = None,
    ) -> None:
        self._stub = stub
        self._addr = server_addr
        self._metadata: Sequence[tuple[str, str]] = (("authorization", f"Bearer {token}"),) if token else ()
        self._default = default_resource_type

    async def AddInstance(
        self, request: myshoes_pb2.AddInstanceRequest, context: grpc.aio.ServicerContext
    ) -> myshoes_pb2.AddInstanceResponse:
        try:
            rt_name = resource_type_name(request.resource_type, self._default)
        except UnknownResourceType as e:
            log.error("AddInstance refused", extra={"kv": {"runner_name": request.runner_name, "error": e}})
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        upstream = shoes_pb2.AddInstanceRequest(
            runner_name=request.runner_name,
            setup_script=request.setup_script,
            resource_type=rt_name,
            labels=list(request.labels),
        )
        kv = {"runner_name": request.runner_name, "resource_type": rt_name or "(server default)",
              "labels": ",".join(request.labels)}
        resp = await self._forward("AddInstance", self._stub.AddInstance, upstream, context, kv)
        served = resource_type_enum(resp.resource_type)
        if served == RT.Unknown:
            # an older server does not say; answer with what was asked (Unknown → myshoes keeps its own)
            served = NAME_TO_ENUM.get(rt_name, request.resource_type)
        return myshoes_pb2.AddInstanceResponse(
            cloud_id=resp.cloud_id,
            shoes_type=resp.shoes_type,
            ip_address=resp.ip_address,
            resource_type=served,
        )

    async def DeleteInstance(
        self, request: myshoes_pb2.DeleteInstanceRequest, context: grpc.aio.ServicerContext
    ) -> myshoes_pb2.DeleteInstanceResponse:
        upstream = shoes_pb2.DeleteInstanceRequest(cloud_id=request.cloud_id, labels=list(request.labels))
        kv = {"cloud_id": request.cloud_id}
        await self._forward("DeleteInstance", self._stub.DeleteInstance, upstream, context, kv)
        return myshoes_pb2.DeleteInstanceResponse()

    async def _forward(
        self,
        name: str,
        method: Callable[..., Awaitable[_Resp]],
        request: object,
        context: grpc.aio.ServicerContext,
        kv: Mapping[str, object],
    ) -> _Resp:
        timeout = context.time_remaining()
        if timeout is not None and timeout > NO_DEADLINE_S:
            timeout = None  # the caller set no deadline (myshoes' strict-mode cleanup): invent none
        started = time.monotonic()
        log.info(f"{name} forwarding", extra={"kv": {**kv, "deadline_s": _round(timeout)}})
        try:
            resp = await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            code, details = map_error(e.code(), e.details() or "", self._addr)
            level = logging.INFO if code == grpc.StatusCode.NOT_FOUND else logging.ERROR
            log.log(level, f"{name} failed", extra={"kv": {
                **kv, "code": code.name, "error": details, "elapsed_s": _round(time.monotonic() - started)}})
            await _abort(context, code, details)
        except Exception as e:  # a bug here: retryable for myshoes, never INVALID_ARGUMENT
            log.exception(f"{name} failed inside the plugin", extra={"kv": kv})
            await _abort(context, grpc.StatusCode.INTERNAL, f"shoes-vz-plugin: {type(e).__name__}: {e}")
        log.info(f"{name} done", extra={"kv": {**kv, "elapsed_s": _round(time.monotonic() - started)}})
        return resp


def map_error(code: grpc.StatusCode, details: str, server_addr: str) -> tuple[grpc.StatusCode, str]:
    """The status myshoes gets for the server's status: same code, details that say where it came from."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return code, f"shoes-vz server {server_addr} unavailable: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return code, f"shoes-vz server {server_addr} refused the token (check SHOESVZ_TOKEN): {details}"
    if code == grpc.StatusCode.PERMISSION_DENIED:  # another role's token, e.g. the agents' enrollment_token
        return code, (f"shoes-vz server {server_addr} does not take this token for ShoesService (SHOESVZ_TOKEN "
                      f"must be the server's shoes_token): {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        # e.g. SHOESVZ_SERVER_ADDR names something that is not a shoes-vz server: retryable, loud
        return code, f"{server_addr} does not serve shoes.vz.shoes.v1.ShoesService: {details}"
    return code, details


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("unreachable")  # context.abort always raises


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
