"""A small go-plugin host in Python: launches the plugin the way myshoes does and talks to it.

For developers without Go, the benchmark and `shoes-vz plugin call`: one plugin process per call,
the magic cookie and port range in the environment, the handshake line read from stdout, plaintext
gRPC, and `kill()` doing what go-plugin's `Client.Kill()` does (GRPCController.Shutdown, close the
connection, wait up to 2 s for the process to exit, then SIGKILL). The Go interop program
(`interop/goplugin-host`) is the real thing; this mirrors it.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from shoes_vz.plugin.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE
from shoes_vz.wire import goplugin_pb2, goplugin_pb2_grpc, myshoes_pb2_grpc

GRACEFUL_WAIT_S = 2.0  # go-plugin Client.Kill()
START_TIMEOUT_S = 60.0  # go-plugin's default StartTimeout


class PluginStartError(Exception):
    pass


def host_env(extra: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment myshoes' go-plugin host gives its plugin: its own plus the handshake variables
    (`extra` last, so a test can change those too)."""
    env = dict(os.environ if base is None else base)
    env.update({
        MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE,
        "PLUGIN_MIN_PORT": "10000",
        "PLUGIN_MAX_PORT": "25000",
        "PLUGIN_PROTOCOL_VERSIONS": "1",
    })
    env.update(extra or {})
    return env


@dataclass
class Handshake:
    core_version: int
    app_version: int
    network: str
    address: str
    protocol: str
    line: str

    @classmethod
    def parse(cls, line: str) -> Handshake:
        parts = line.strip().split("|")
        if len(parts) < 5:
            raise PluginStartError(f"unrecognized plugin handshake {line!r}")
        return cls(int(parts[0]), int(parts[1]), parts[2], parts[3], parts[4], line)


@dataclass
class PluginProcess:
    """One launched plugin. Use as a context manager; leaving it runs kill()."""

    proc: subprocess.Popen[bytes]
    handshake: Handshake
    handshake_s: float
    channel: grpc.Channel = field(init=False)
    kill_s: float | None = None
    graceful: bool | None = None

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.handshake.address)

    @classmethod
    def launch(
        cls,
        path: Path | str,
        env: Mapping[str, str],
        *,
        stderr: int | None = None,
        start_timeout: float = START_TIMEOUT_S,
        args: Sequence[str] = (),
    ) -> PluginProcess:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(path), *args], env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert proc.stdout is not None
        line = _read_line(proc, start_timeout)
        elapsed = time.monotonic() - started
        if not line:
            proc.kill()
            proc.wait()
            raise PluginStartError(f"plugin exited (status {proc.returncode}) before the handshake")
        handshake = Handshake.parse(line.decode())
        if handshake.protocol != "grpc" or handshake.network != "tcp":
            proc.kill()
            raise PluginStartError(f"plugin announced {handshake.network}/{handshake.protocol}, not tcp/grpc")
        return cls(proc, handshake, elapsed)

    def shoes(self) -> myshoes_pb2_grpc.ShoesStub:
        return myshoes_pb2_grpc.ShoesStub(self.channel)

    def kill(self) -> float:
        """go-plugin's Client.Kill(); returns how long it took."""
        if self.kill_s is not None:
            return self.kill_s
        started = time.monotonic()
        try:
            goplugin_pb2_grpc.GRPCControllerStub(self.channel).Shutdown(goplugin_pb2.Empty(), timeout=5)
        except grpc.RpcError:
            pass  # ignored by go-plugin as well
        self.channel.close()
        try:
            self.proc.wait(GRACEFUL_WAIT_S)
            self.graceful = True
        except subprocess.TimeoutExpired:
            self.graceful = False
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.read()  # go-plugin also waits for its pipe readers to hit EOF
            self.proc.stdout.close()
        self.kill_s = time.monotonic() - started
        return self.kill_s

    def __enter__(self) -> PluginProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first stdout line, without blocking past `timeout` (b"" at EOF)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise PluginStartError(f"the plugin printed no handshake line within {timeout:g}s")
            if not sel.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return buf
            buf += chunk
    return buf.split(b"\n", 1)[0] + b"\n"
