"""`shoes-vz-plugin`: the myshoes shoes-provider plugin (DESIGN §3.3).

myshoes starts it with no arguments once per call; it announces itself on stdout with go-plugin's
handshake line, serves `whywaita.myshoes.Shoes` (forwarded to the server's ShoesService) plus
go-plugin's internal services over plaintext gRPC on 127.0.0.1, and exits as soon as the host calls
`plugin.GRPCController/Shutdown` (or sends SIGTERM, or goes away). Configuration: settings.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TextIO

import grpc
import grpc.aio

from shoes_vz import __version__
from shoes_vz.core.errors import ConfigError
from shoes_vz.plugin import log as plugin_log
from shoes_vz.plugin.forward import ShoesForwarder
from shoes_vz.plugin.goplugin import add_goplugin_services
from shoes_vz.plugin.handshake import (
    NOT_A_PROGRAM_MESSAGE,
    HandshakeError,
    PortRange,
    bind_in_range,
    check_host,
    cookie_ok,
    handshake_line,
)
from shoes_vz.plugin.settings import PluginSettings
from shoes_vz.wire import myshoes_pb2_grpc, shoes_pb2_grpc

log = logging.getLogger("shoes_vz.plugin")

PARENT_POLL_S = 1.0
STOP_GRACE_S = 0.05


def make_channel(settings: PluginSettings) -> grpc.aio.Channel:
    options: list[tuple[str, str | int]] = [("grpc.primary_user_agent", f"shoes-vz-plugin/{__version__}")]
    if not settings.tls:
        return grpc.aio.insecure_channel(settings.server_addr, options=options)
    roots = settings.tls_ca.read_bytes() if settings.tls_ca else None
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(settings.server_addr, creds, options=options)


async def _watch_parent(shutdown: asyncio.Event) -> None:
    """The host died without Kill() (we were re-parented): nobody will ever call us again."""
    parent = os.getppid()
    while not shutdown.is_set():
        await asyncio.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            log.warning("the plugin host went away; exiting", extra={"kv": {"host_pid": parent}})
            shutdown.set()


async def serve(
    settings: PluginSettings,
    ports: PortRange,
    *,
    stdout: TextIO | None = None,
    shutdown: asyncio.Event | None = None,
) -> int:
    """Serve until shut down; writes the handshake line to `stdout` once serving."""
    shutdown = shutdown or asyncio.Event()
    channel = make_channel(settings)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    forwarder = ShoesForwarder(
        shoes_pb2_grpc.ShoesServiceStub(channel),
        server_addr=settings.server_addr,
        token=settings.token,
        default_resource_type=settings.default_resource_type,
    )
    myshoes_pb2_grpc.add_ShoesServicer_to_server(forwarder, server)
    await add_goplugin_services(server, shutdown, controller=not settings.disable_shutdown)
    port = bind_in_range(ports, server.add_insecure_port)
    await server.start()
    channel.get_state(try_to_connect=True)  # connect to the server while the host connects to us

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, shutdown.set)
        # like go-plugin servers: an interrupt meant for the host's terminal is not for us
        loop.add_signal_handler(signal.SIGINT, lambda: log.debug("ignoring SIGINT; the host stops plugins"))

    out = stdout or sys.stdout
    out.write(handshake_line(port) + "\n")
    out.flush()
    log.info("serving", extra={"kv": {"port": port, "server": settings.server_addr, "pid": os.getpid(),
                                      "version": __version__}})
    watcher = asyncio.create_task(_watch_parent(shutdown))
    try:
        await shutdown.wait()
    finally:
        watcher.cancel()
        await server.stop(STOP_GRACE_S)
        await channel.close()
    log.debug("stopped")
    return 0


def _help() -> str:
    from shoes_vz.plugin import settings as settings_module

    return f"shoes-vz-plugin {__version__}\n\n{NOT_A_PROGRAM_MESSAGE}\n{settings_module.__doc__}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("--version", "version"):
        print(f"shoes-vz-plugin {__version__}")
        return 0
    if args and args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0
    env = os.environ
    if not cookie_ok(env):
        sys.stderr.write(NOT_A_PROGRAM_MESSAGE + "\n")
        return 1
    plugin_log.configure(
        env.get("SHOESVZ_PLUGIN_LOG_LEVEL", "info").strip().lower(),
        env.get("SHOESVZ_PLUGIN_LOG_FORMAT", "text").strip().lower(),
    )
    try:
        settings = PluginSettings.from_env(env)
        ports = PortRange.from_env(env)
        for warning in check_host(env):
            log.warning(warning)
    except (ConfigError, HandshakeError) as e:
        log.error(f"cannot start: {e}")
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until serve() installs its own handler
    try:
        code = asyncio.run(serve(settings, ports))
    except HandshakeError as e:
        log.error(f"cannot start: {e}")
        code = 1
    # Exit at once: skip interpreter and gRPC teardown, which Kill() would otherwise wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
