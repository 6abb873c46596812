"""`ServerApp`: the server's object graph — store, scheduler, gRPC services, /metrics.

`async with ServerApp(settings) as app:` serves until the block ends (tests bind port 0 and read
`app.port`); the CLI adds signal handling around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoes_vz import __version__
from shoes_vz.config import SERVER_TOKENS, ServerSettings
from shoes_vz.core.errors import ConfigError, InUse, ShoesVzError
from shoes_vz.core.listeners import cannot_bind
from shoes_vz.core.net import is_loopback, split_hostport
from shoes_vz.core.pidlock import PIDLock
from shoes_vz.core.states import ReapReason
from shoes_vz.server import limits
from shoes_vz.server.admin_service import AdminService, admin_open_methods
from shoes_vz.server.agent_service import AgentService
from shoes_vz.server.auth import Authenticator
from shoes_vz.server.db_files import secure_directory
from shoes_vz.server.hub import Hub
from shoes_vz.server.metrics import ServerMetrics
from shoes_vz.server.principal import Role
from shoes_vz.server.reaper import AgentReaper
from shoes_vz.server.scheduler import Scheduler, describe_mapping
from shoes_vz.server.shoes_service import ShoesService
from shoes_vz.server.status_page import StatusPage
from shoes_vz.server.store import Store
from shoes_vz.wire import admin_pb2_grpc, agent_pb2_grpc, shoes_pb2_grpc

log = logging.getLogger(__name__)
SHOES_SERVICE = "shoes.vz.shoes.v1.ShoesService"
AGENT_SERVICE = "shoes.vz.agent.v1.AgentService"
ADMIN_SERVICE = "shoes.vz.admin.v1.AdminService"
SERVICES = (SHOES_SERVICE, AGENT_SERVICE, ADMIN_SERVICE)
PRUNE_EVERY = 60.0  # seconds between prunes of gone runners' rows (server.history_keep, history_max_age)


class ServerApp:
    def __init__(self, settings: ServerSettings) -> None:
        settings.check_transport()
        self.settings = settings
        self.store = Store(settings.db_path)
        self.hub = Hub(self.store)
        self.scheduler = Scheduler(self.store, settings.resource_types)
        self.metrics = ServerMetrics(self.store)
        self.reaper = AgentReaper(self.store, settings.reap_after_agent_gone)
        self.agent_service = AgentService(self)
        self.port = 0
        self.metrics_port = 0
        self.status_port = 0
        self.status_page: StatusPage | None = None
        self.lock = PIDLock(settings.db_path.with_name(settings.db_path.name + ".lock"), "server")
        self._grpc: grpc.aio.Server | None = None
        self._started = False
        self._web: web.AppRunner | None = None
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Hold the database, then the gRPC and /metrics ports; on any failure undo what was done."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        # one server per database: a second one would split the fleet's state (and its agents) in two
        await asyncio.to_thread(secure_directory, s.db_path.parent)  # before the lock file goes into it
        await asyncio.to_thread(self.lock.acquire, f"the database {s.db_path}",
                                "Stop that server, or give this one another database (server.db_path, --db).")
        await self.store.aopen()
        # every agent is offline until its Sync stream connects to this server (not until agent_offline_after)
        await self.store.call(self.store.mark_all_agents_offline)
        self._grpc = server = grpc.aio.server(interceptors=[self._authenticator()], options=[
            ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10000),
            ("grpc.so_reuseport", 0),  # gRPC shares a port with a second server by default: refuse instead
        ])
        shoes_pb2_grpc.add_ShoesServiceServicer_to_server(ShoesService(self), server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.agent_service, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(self.store, self.hub), server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        host, port = split_hostport(s.listen)
        taken = await asyncio.to_thread(cannot_bind, host, port) if port else None
        if taken is not None:  # said before gRPC logs its own lines about it
            raise self._cannot_listen(s.listen, "server.listen, --listen")
        try:
            if s.tls_cert and s.tls_key:
                creds = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())])
                self.port = server.add_secure_port(s.listen, creds)
            else:
                self.port = server.add_insecure_port(s.listen)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise self._cannot_listen(s.listen, "server.listen, --listen")
        await server.start()
        self._started = True
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_listen:
            app = web.Application()
            app.router.add_get("/metrics", self.metrics.handle)
            self._web = web.AppRunner(app, access_log=None)
            await self._web.setup()
            host, port = split_hostport(s.metrics_listen)
            site = web.TCPSite(self._web, host, port)
            try:
                await site.start()
            except OSError:
                raise self._cannot_listen(s.metrics_listen, "server.metrics_listen, --metrics-listen") from None
            sockets = getattr(site._server, "sockets", None) or []
            self.metrics_port = int(sockets[0].getsockname()[1]) if sockets else port
        if s.status_listen:
            await self._start_status_page()
        await asyncio.to_thread(self.lock.update, address=f"{host}:{self.port}")
        self.reaper.started_at = time.time()  # gone agents count from here at the earliest
        self._monitor = asyncio.create_task(self._watch_agents(), name="agent-monitor")
        self._log_start()
        if s.open_roles():
            doors = {"shoes_token": "call ShoesService", "enrollment_token": "enrol an agent"}
            log.warning("server: no %s: anyone who can reach %s may %s (allowed on loopback only; set them for "
                        "anything but a local trial)", " and no ".join(s.open_roles()), s.listen,
                        " and ".join(doors[r] for r in s.open_roles()))
        if s.resource_types:
            log.info("resource types: %s", describe_mapping(s.resource_types))
            if s.default_resource_type not in s.resource_types:
                log.warning("default_resource_type %s is not in resource_types: myshoes' Unknown type will "
                            "be refused (INVALID_ARGUMENT)", s.default_resource_type)
        else:
            log.info("resource types: no mapping configured; each template's own resource_types decide")

    async def _start_status_page(self) -> None:
        s = self.settings
        host, port = split_hostport(s.status_listen)
        tls = None
        if s.tls_cert and s.tls_key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(s.tls_cert, s.tls_key)
        tokens = [t for t in (s.viewer_token, s.operator_token) if t]
        self.status_page = StatusPage(self.store, tokens, require_auth=not is_loopback(host))
        try:
            self.status_port = await self.status_page.start(host, port, tls)
        except OSError:
            raise self._cannot_listen(s.status_listen, "server.status_listen") from None
        log.info("status page on %s://%s:%d/ (%s)", "https" if tls else "http", host, self.status_port,
                 "the viewer or operator token" if self.status_page.require_auth else "open: loopback")
    def _log_start(self) -> None:
        """One line that says what this server is: version, addresses, files, which credentials are
        set (never their values)."""
        s = self.settings
        metrics = f"{s.metrics_listen.rpartition(':')[0]}:{self.metrics_port}" if s.metrics_listen else "off"
        given = [name for name in SERVER_TOKENS if getattr(s, name)]
        unset = [name for name in SERVER_TOKENS if not getattr(s, name)]
        kv = {"version": __version__, "listen": s.listen, "grpc_port": self.port, "metrics": metrics,
              "db_path": str(s.db_path), "tls": bool(s.tls_cert), "credentials_set": ",".join(given),
              "credentials_unset": ",".join(unset)}
        log.info("shoes-vz %s server listening on %s (gRPC port %d, TLS %s), /metrics %s, database %s; "
                 "credentials set: %s; not set: %s", __version__, s.listen, self.port, "on" if s.tls_cert else "off",
                 metrics, s.db_path, ", ".join(given) or "none", ", ".join(unset) or "none", extra={"kv": kv})

    def _authenticator(self) -> Authenticator:
        """Every call's principal (server/auth.py); a role left without a token is open to anyone, which
        check_transport allows on loopback only (said once at start)."""
        s = self.settings
        tokens = {Role.MYSHOES: s.shoes_token, Role.ENROLLMENT: s.enrollment_token, Role.OPERATOR: s.operator_token,
                  Role.VIEWER: s.viewer_token}
        open_methods: dict[str, Role] = {}
        if not s.shoes_token:
            open_methods |= {f"/{SHOES_SERVICE}/{m}": Role.MYSHOES for m in ("AddInstance", "DeleteInstance")}
        if not s.enrollment_token:
            open_methods[f"/{AGENT_SERVICE}/Enroll"] = Role.ENROLLMENT
        if is_loopback(split_hostport(s.listen)[0]):  # the admin surface is never open off loopback
            open_methods |= admin_open_methods(ADMIN_SERVICE, s.operator_token, s.viewer_token)
        return Authenticator(tokens, self.agent_service.enrollment.verify, open_methods)

    @staticmethod
    def _cannot_listen(listen: str, setting: str) -> ShoesVzError:
        host, port = split_hostport(listen)
        problem = cannot_bind(host, port) or "gRPC could not bind it"
        cls = InUse if "in use" in problem else ConfigError
        return cls(f"server: cannot listen on {listen}: {problem}. Stop that process, or choose another "
                   f"address ({setting})")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        if self._grpc is not None:
            if self._started:
                await self.health.enter_graceful_shutdown()
            for conn in list(self.hub.connections.values()):
                conn.close()
            await self._grpc.stop(grace=2 if self._started else None)  # never left to __del__
            self._grpc = None
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        if self.status_page is not None:
            await self.status_page.stop()
        if self.store.is_open:
            await self.store.aclose()
        self.lock.release()

    async def __aenter__(self) -> ServerApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _watch_agents(self) -> None:
        """Heartbeats: silent agents go offline (and their runners are reaped once they are gone long
        enough); unacked commands are re-sent."""
        s = self.settings
        pruned_at = 0.0
        while True:
            now = time.time()
            if now - pruned_at >= PRUNE_EVERY:  # at start too: a server down a while has its history to trim
                pruned_at = now
                pruned = await self.store.call(self.store.prune_history, s.history_keep, now - s.history_max_age)
                if pruned:
                    log.info("forgot %d gone runner(s) beyond server.history_keep (%d) or history_max_age (%gs)",
                             pruned, s.history_keep, s.history_max_age)
            await asyncio.sleep(min(s.sync_interval, s.command_resend_after) / 2)
            now = time.time()
            for agent_id in await self.store.call(self.store.mark_stale_agents_offline, now - s.agent_offline_after):
                log.warning("agent %s missed its heartbeats: offline", agent_id)
                conn = self.hub.connections.get(agent_id)
                if conn is not None:
                    conn.close()
            for runner_id in await self.reaper.reap(set(self.hub.connections), now):
                self.metrics.reaped.labels(reason=ReapReason.AGENT_GONE.value).inc()
                self.hub.changed(runner_id)
            for agent_id in list(self.hub.connections):
                stale = await self.store.call(self.store.pending_commands, agent_id, now - s.command_resend_after)
                await self.hub.send(stale)
