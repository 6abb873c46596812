"""`Authenticator`: the one interceptor that resolves every call's caller (docs/security.md §2).

Credentials ride in the `authorization` header:

    Bearer <token>              the role whose token it is: myshoes (shoes_token), enrollment,
                                operator, viewer
    Agent <agent id>:<secret>   an enrolled agent (server/enrollment.py checks the secret's hash)

Resolved once per call, the principal is bound for the servicer (`principal.current()`), which
states the roles it serves. Here, before any servicer runs:
- missing credentials → UNAUTHENTICATED, unless the method is open (its role has no token
  configured, which the server allows on loopback only: the caller then has that role); wrong or
  malformed credentials →
  UNAUTHENTICATED always. The same for every call kind, streams included, and without decoding the
  caller's request.
- an undecodable request message → INVALID_ARGUMENT, without a traceback (gRPC itself would answer
  UNKNOWN and log one per call).
Health checks pass untouched.

Refusals are logged at most once per peer host (or subject) per interval, with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from shoes_vz.core import ids
from shoes_vz.core.logsafe import shown
from shoes_vz.server.principal import NOBODY, Principal, Role, bind

log = logging.getLogger(__name__)
LOG_INTERVAL = 60.0
MAX_REMEMBERED = 1024  # subjects the refusal log keeps apart; the oldest go first
MAX_SECRET_CHARS = 128
DRAIN_MESSAGES = 8      # read (and drop) before a stream's refusal, so that a client still writing
DRAIN_SECONDS = 0.25    # gets the refusal's status, not its own failed write (grpc.aio reports INTERNAL)
HEALTH = "/grpc.health.v1.Health/"
FIX = ("the plugin sends SHOESVZ_TOKEN (= server.shoes_token); an agent enrols with agent.enrollment_token "
       "(= server.enrollment_token), then sends its own secret (<agent.state_dir>/agent-secret); the fleet "
       "commands send admin.token (= server.operator_token or viewer_token)")

Verify = Callable[[str, str], Awaitable[bool]]  # (agent id, secret) → enrolled with that secret


@dataclass
class _Seen:
    logged_at: float
    unlogged: int = 0


class RefusalLog:
    """One warning per subject per interval, with the count of refusals it stands for."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def note(self, subject: str, message: str) -> bool:
        """Log `message` about `subject` unless it was logged within the interval; True when logged."""
        now = self.clock()
        seen = self._seen.get(subject)
        if seen is not None and now - seen.logged_at < self.interval:
            seen.unlogged += 1
            return False
        count = 1 + (seen.unlogged if seen is not None else 0)
        self._seen[subject] = _Seen(now)
        self._seen.move_to_end(subject)
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        since = f" ({count} since the last report)" if seen is not None else ""
        log.warning("%s%s", message, since)
        return True

    def rejected(self, peer: str, method: str, why: str) -> None:
        host = peer_host(peer)
        self.note(host, f"rejected a call from {host}: {why}; last: {method} — {FIX}")


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` → `127.0.0.1` (a reconnect gets a new port, not a new line)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]") or peer
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0] or peer
    return peer


async def drain(requests: AsyncIterator[Any]) -> None:
    """Before ending a client-streaming call with a refusal: take what the client already sent, up to
    DRAIN_MESSAGES within DRAIN_SECONDS (never decoded when raw, never applied)."""
    async def take() -> None:
        n = 0
        async for _ in requests:
            n += 1
            if n >= DRAIN_MESSAGES:
                return

    with contextlib.suppress(Exception):  # a stream that broke or ended meanwhile: nothing to drain
        await asyncio.wait_for(take(), DRAIN_SECONDS)


def parse_agent_credential(value: str) -> tuple[str, str] | None:
    """`<agent id>:<secret>` → (id, secret); None when it cannot be one."""
    agent_id, sep, secret = value.partition(":")
    if not sep or not ids.AGENT_ID_RE.fullmatch(agent_id) or not 0 < len(secret) <= MAX_SECRET_CHARS:
        return None
    return agent_id, secret


class Authenticator(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: dict[Role, str | None], verify_agent: Verify,
                 open_methods: Mapping[str, Role] | None = None, refusals: RefusalLog | None = None) -> None:
        self.tokens = [(role, f"Bearer {t}".encode()) for role, t in tokens.items() if t]
        self.verify_agent = verify_agent
        self.open_methods = dict(open_methods or {})  # method → the role a caller without credentials gets
        self.refusals = refusals or RefusalLog()

    async def resolve(self, values: list[str]) -> Principal | str:
        """The principal these `authorization` values prove, or why they prove none."""
        if not values:
            return NOBODY
        if len(values) > 1:
            return "more than one authorization header"
        value = values[0]
        scheme, _, rest = value.partition(" ")
        if scheme == "Bearer":
            given = value.encode()
            role = None
            for r, expected in self.tokens:  # every token compared: the time taken names none of them
                if hmac.compare_digest(given, expected):
                    role = r
            return Principal(role) if role is not None else "a wrong bearer token"
        if scheme == "Agent":
            cred = parse_agent_credential(rest)
            if cred is None:
                return "a malformed agent credential"
            if await self.verify_agent(*cred):
                return Principal(Role.AGENT, cred[0])
            return f"agent {cred[0]}'s secret is not the one it enrolled with (or it is not enrolled)"
        return "an authorization header of an unknown kind"

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(HEALTH):
            return handler
        values = [str(v) for k, v in (details.invocation_metadata or ()) if k == "authorization"]
        found = await self.resolve(values)
        if isinstance(found, str):
            return self._refuse(handler, method, found)
        if found.role is Role.NONE:
            if method not in self.open_methods:
                return self._refuse(handler, method, "no credentials")
            found = Principal(self.open_methods[method])
        return bound(handler, found)

    def _refuse(self, handler: grpc.RpcMethodHandler, method: str, why: str) -> grpc.RpcMethodHandler:
        async def refuse(request: Any, ctx: grpc.aio.ServicerContext) -> None:
            self.refusals.rejected(ctx.peer(), method, why)  # the peer is known only here
            if handler.request_streaming:
                await drain(request)
            await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why}: {FIX}")

        return _handler_like(handler, refuse)


def _handler_like(handler: grpc.RpcMethodHandler,
                  body: Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that decodes no request and runs `body` (which aborts)."""
    if handler.response_streaming:
        async def stream(request: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await body(request, ctx)
            return
            yield  # an async generator, as a streaming response must be

        behaviour: Any = stream
    else:
        async def unary(request: Any, ctx: grpc.aio.ServicerContext) -> None:
            await body(request, ctx)

        behaviour = unary
    return _make(handler, behaviour)


def bound(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """`handler` with `principal` bound for its call, and its requests decoded here: an undecodable
    one ends the call with INVALID_ARGUMENT (after the servicer saw the messages before it)."""
    decode = handler.request_deserializer
    kind = ("stream" if handler.request_streaming else "unary") + "_" + \
           ("stream" if handler.response_streaming else "unary")
    inner = getattr(handler, kind)

    async def one(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
        try:
            return decode(raw) if decode else raw
        except (DecodeError, ValueError, TypeError) as e:
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {shown(e, 120)}")

    def many(raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext, bad: list[str]) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            async for raw in raws:
                try:
                    yield decode(raw) if decode else raw
                except (DecodeError, ValueError, TypeError) as e:
                    bad.append(f"undecodable request message: {shown(e, 120)}")
                    return  # to the servicer, the stream ends here; the call then ends INVALID_ARGUMENT
        return gen()

    async def fail_if(bad: list[str], raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> None:
        if bad:
            await drain(raws)  # the frames after the bad one
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, bad[0])

    if kind == "unary_unary":
        async def behaviour(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
            bind(principal)
            return await inner(await one(raw, ctx), ctx)
    elif kind == "unary_stream":
        async def behaviour(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # type: ignore[misc]
            bind(principal)
            async for m in inner(await one(raw, ctx), ctx):
                yield m
    elif kind == "stream_unary":
        async def behaviour(raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
            bind(principal)
            bad: list[str] = []
            result = await inner(many(raws, ctx, bad), ctx)
            await fail_if(bad, raws, ctx)
            return result
    else:
        async def behaviour(raws: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext  # type: ignore[misc]
                            ) -> AsyncIterator[Any]:
            bind(principal)
            bad: list[str] = []
            async for m in inner(many(raws, ctx, bad), ctx):
                yield m
            await fail_if(bad, raws, ctx)
    return _make(handler, behaviour)


def _make(handler: grpc.RpcMethodHandler, behaviour: Any) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind around `behaviour`, which receives raw request bytes."""
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler,
            }[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=None, response_serializer=handler.response_serializer)


__all__ = ["Authenticator", "RefusalLog", "bound", "drain", "parse_agent_credential", "peer_host"]
