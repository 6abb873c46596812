"""`AdminClient`: the fleet commands' one way to the server's AdminService (blocking gRPC).

A refused or failed call becomes one ShoesVzError line naming the server, the status and what to
check; nothing else of gRPC leaves this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from shoes_vz.config import AdminSettings
from shoes_vz.core.errors import ShoesVzError
from shoes_vz.wire import admin_pb2 as pb
from shoes_vz.wire import admin_pb2_grpc as pbg

M = TypeVar("M")
WHERE = "admin.server_addr, --server, SHOESVZ_ADMIN_SERVER_ADDR"
TOKEN = "admin.token, --token, SHOESVZ_ADMIN_TOKEN"


class AdminError(ShoesVzError):
    """The server refused or failed a fleet call (or could not be reached)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    def __init__(self, settings: AdminSettings) -> None:
        self.settings = settings
        s = settings
        if s.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=s.tls_ca.read_bytes())
            self.channel = grpc.secure_channel(s.server_addr, creds)
        else:
            self.channel = grpc.insecure_channel(s.server_addr)
        self.stub = pbg.AdminServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {s.token}"),) if s.token else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., M], request: Any) -> M:
        try:
            return method(request, metadata=self.metadata, timeout=self.settings.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: grpc.RpcError) -> AdminError:
        code: grpc.StatusCode = e.code()  # type: ignore[attr-defined]
        details = (e.details() or "").strip()  # type: ignore[attr-defined]
        addr = self.settings.server_addr
        if code is grpc.StatusCode.UNAVAILABLE:
            return AdminError(f"cannot reach the server at {addr}: {details or 'unavailable'} (is it running? "
                              f"{WHERE})", code)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return AdminError(f"the server at {addr} did not answer within {self.settings.timeout:g}s "
                              "(admin.timeout)", code)
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return AdminError(f"the server at {addr} refused the credentials: give its operator_token or "
                              f"viewer_token ({TOKEN})", code)
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return AdminError(f"the server at {addr} refused: {details}; this needs the operator_token ({TOKEN})",
                              code)
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return AdminError(f"the server at {addr} has no AdminService (an older shoes-vz server?)", code)
        return AdminError(f"{code.name}: {details}", code)

    # -- calls ----------------------------------------------------------------------------------
    def agents(self) -> list[pb.AgentInfo]:
        return list(self._call(self.stub.ListAgents, pb.ListAgentsRequest()).agents)

    def runners(self, include_gone: bool = False, agent_id: str = "", limit: int = 0) -> list[pb.RunnerInfo]:
        request = pb.ListRunnersRequest(include_gone=include_gone, agent_id=agent_id, limit=limit)
        return list(self._call(self.stub.ListRunners, request).runners)

    def drain(self, agent_id: str) -> pb.DrainAgentResponse:
        return self._call(self.stub.DrainAgent, pb.DrainAgentRequest(agent_id=agent_id))

    def undrain(self, agent_id: str) -> pb.UndrainAgentResponse:
        return self._call(self.stub.UndrainAgent, pb.UndrainAgentRequest(agent_id=agent_id))

    def delete(self, runner: str) -> pb.RunnerInfo:
        return self._call(self.stub.DeleteRunner, pb.DeleteRunnerRequest(runner=runner)).runner


__all__ = ["AdminClient", "AdminError"]
