"""Fixtures for the plugin tests.

`fake_shoes_server` is a STAND-IN ShoesService for unit-level tests of the plugin's own mapping
(resource types, status codes, deadline, metadata). It is not the server: end-to-end and interop
tests use the real server + sim agent stack, `sim_stack` (tests/conftest.py).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import pytest

from shoes_vz.core.errors import InvalidInput
from shoes_vz.core.ids import cloud_id, new_runner_id, runner_id_from_cloud_id, validate_runner_name
from shoes_vz.core.resources import normalize_resource_type
from shoes_vz.plugin.host import host_env
from shoes_vz.plugin.install import install_plugin
from shoes_vz.wire import shoes_pb2, shoes_pb2_grpc

FAKE_DEFAULT_RESOURCE_TYPE = "small"


@dataclass
class Seen:
    method: str
    request: object
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeShoesService(shoes_pb2_grpc.ShoesServiceServicer):
    """Just enough ShoesService semantics to check what the plugin sends and how it maps answers."""

    token: str | None = None
    seen: list[Seen] = field(default_factory=list)
    runners: dict[str, str] = field(default_factory=dict)  # runner_id -> runner_name
    fail_with: tuple[grpc.StatusCode, str] | None = None
    delay: float = 0.0
    resource_type_answer: str | None = None  # override the resource_type the server reports
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append(Seen(method, request, md, context.time_remaining()))
        if self.token and md.get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if self.delay:
            end = time.monotonic() + self.delay
            while context.is_active() and time.monotonic() < end:
                time.sleep(0.01)
        if self.fail_with:
            context.abort(*self.fail_with)

    def AddInstance(
        self, request: shoes_pb2.AddInstanceRequest, context: grpc.ServicerContext
    ) -> shoes_pb2.AddInstanceResponse:
        self._enter("AddInstance", request, context)
        try:
            validate_runner_name(request.runner_name)
            rt = normalize_resource_type(request.resource_type, FAKE_DEFAULT_RESOURCE_TYPE)
        except InvalidInput as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with self.lock:
            rid = next((r for r, n in self.runners.items() if n == request.runner_name), None)
            if rid is None:
                rid = new_runner_id()
                self.runners[rid] = request.runner_name
        return shoes_pb2.AddInstanceResponse(
            cloud_id=cloud_id(rid), shoes_type="shoes-vz", ip_address="127.100.0.2",
            resource_type=rt if self.resource_type_answer is None else self.resource_type_answer,
        )

    def DeleteInstance(
        self, request: shoes_pb2.DeleteInstanceRequest, context: grpc.ServicerContext
    ) -> shoes_pb2.DeleteInstanceResponse:
        self._enter("DeleteInstance", request, context)
        rid = runner_id_from_cloud_id(request.cloud_id)
        with self.lock:
            if rid is None or self.runners.pop(rid, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no runner {request.cloud_id}")
        return shoes_pb2.DeleteInstanceResponse()


@dataclass
class FakeServer:
    addr: str
    token: str
    service: FakeShoesService


@pytest.fixture
def fake_shoes_server() -> Iterator[FakeServer]:
    """A stand-in ShoesService on 127.0.0.1 (thread-pool gRPC, so blocking tests don't starve it)."""
    token = secrets.token_hex(8)
    service = FakeShoesService(token=token)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    shoes_pb2_grpc.add_ShoesServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield FakeServer(f"127.0.0.1:{port}", token, service)
    server.stop(0)


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin as `shoes-vz plugin install` writes it (a zipapp myshoes accepts)."""
    return install_plugin(tmp_path_factory.mktemp("plugin") / "shoes-vz-plugin")


class PluginEnv(Protocol):
    def __call__(self, addr: str, token: str | None = None, **extra: str) -> dict[str, str]: ...


@pytest.fixture
def plugin_env() -> PluginEnv:
    """`plugin_env(addr, token, **more)`: the environment myshoes' host gives the plugin."""

    def make(addr: str, token: str | None = None, **extra: str) -> dict[str, str]:
        env = {"SHOESVZ_SERVER_ADDR": addr, **extra}
        if token:
            env["SHOESVZ_TOKEN"] = token
        return host_env(env)

    return make
