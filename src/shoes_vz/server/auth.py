"""`BearerAuth`: every call but health checks carries `authorization: Bearer <token>`.

A rejected call is logged — at most one line per peer host per `interval`, carrying how many
calls were rejected since the last line — so a misconfigured agent or plugin shows up in the
server's log without flooding it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

log = logging.getLogger(__name__)
LOG_INTERVAL = 60.0


@dataclass
class _Peer:
    logged_at: float
    unlogged: int = 0


class RejectionLog:
    """One log line per peer per interval, with the count of rejections it stands for."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._peers: dict[str, _Peer] = {}

    def rejected(self, peer: str, method: str, why: str) -> None:
        host = _host(peer)
        now = self.clock()
        seen = self._peers.get(host)
        if seen is not None and now - seen.logged_at < self.interval:
            seen.unlogged += 1
            return
        count = 1 + (seen.unlogged if seen is not None else 0)
        self._peers[host] = _Peer(now)
        since = f" ({count} since the last report)" if seen is not None else ""
        log.warning("rejected a call from %s: %s%s; last: %s — the caller must send the server's token "
                    "(agent: agent.token / SHOESVZ_AGENT_TOKEN; plugin: SHOESVZ_TOKEN)", host, why, since, method)


def _host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` → `127.0.0.1` (a reconnect gets a new port, not a new line)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]") or peer
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0] or peer
    return peer


class BearerAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, rejections: RejectionLog | None = None) -> None:
        self.expected = f"Bearer {token}".encode()
        self.rejections = rejections or RejectionLog()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        got = str(dict(details.invocation_metadata or ()).get("authorization", ""))
        if hmac.compare_digest(got.encode(), self.expected):
            return await continuation(details)
        why = "no bearer token" if not got else "a wrong bearer token"
        method = details.method

        async def deny(_req: Any, ctx: grpc.aio.ServicerContext) -> None:
            self.rejections.rejected(ctx.peer(), method, why)  # the peer is known only here
            await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        handler = await continuation(details)
        if handler is not None and handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)  # type: ignore[arg-type]
        return grpc.unary_unary_rpc_method_handler(deny)


__all__ = ["BearerAuth", "RejectionLog"]
