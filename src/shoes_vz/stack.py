"""`LocalStack`: the server and one sim agent as real processes on loopback, in one directory.

Used by `shoes-vz up` (`make run`) and the benchmarks. Nothing is left behind: `stop()` ends both
processes, and the agent tears its runners down first; it kills the VM processes left and sweeps
the bridge of a namespaced sim network whose holder died (no VM of this agent will come to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoes_vz.core.errors import ShoesVzError
from shoes_vz.template import init_sim
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.clone import can_reflink

TEMPLATE = "sim-default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prerequisites() -> list[str]:
    """What stops a local stack on this machine, each with its fix (before any process starts)."""
    from shoes_vz.vm.process import preflight

    problems = preflight("sim")
    for host, what in (("127.0.0.1", "the server and the agent"), ("127.100.0.1", "sim guests (127.100.0.0/16)")):
        try:
            with socket.socket() as s:
                s.bind((host, 0))
                s.listen()
        except OSError as e:
            problems.append(f"cannot listen on {host} for {what}: {e.strerror or e} (the loopback interface "
                            "must be up and 127.0.0.0/8 routed to it)")
    asked = os.environ.get("TMPDIR", "")
    if asked and not (os.path.isdir(asked) and os.access(asked, os.W_OK | os.X_OK)):
        # tempfile would quietly fall back to /tmp: say so instead of using another place than asked
        problems.append(f"TMPDIR={asked} is not a writable directory: create it, or unset TMPDIR")
    else:
        try:
            with tempfile.TemporaryDirectory(prefix="shoes-vz-check-"):
                pass
        except OSError as e:
            problems.append(f"the temp directory {tempfile.gettempdir()} is not usable ({e.strerror or e}): point "
                            "TMPDIR at a writable directory")
    return problems


class LocalStack:
    def __init__(self, root: Path, *, max_runners: int = 2, boot_delay: float = 0.0, restore_delay: float = 0.0,
                 guest_poll_interval: float = 0.25, keep_evidence: bool = False,
                 driver_options: dict[str, Any] | None = None, server_settings: dict[str, Any] | None = None,
                 agent_settings: dict[str, Any] | None = None, verbose: bool = False) -> None:
        self.root = root
        self.driver_options = dict(driver_options or {})
        self.verbose = verbose  # debug logs from the server and the agent
        # a sim template's 64 GiB disk is sparse and never written: 1 GiB free is reserve enough here
        self.extra = {"server": dict(server_settings or {}),
                      "agent": {"disk_reserve": 1 << 30, **(agent_settings or {})}}
        self.keep_evidence = keep_evidence
        self.max_runners = max_runners
        self.boot_delay = boot_delay
        self.restore_delay = restore_delay
        self.guest_poll_interval = guest_poll_interval
        self.token = secrets.token_urlsafe(24)  # the myshoes side's: the plugin sends it (SHOESVZ_TOKEN)
        self.enrollment_token = secrets.token_urlsafe(24)
        self.server_addr = ""
        self.reflink = False
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    @property
    def runners_dir(self) -> Path:
        return self.root / "runners"

    @property
    def state_file(self) -> Path:
        return self.root / "runner-state.json"

    def runner_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    @property
    def db_path(self) -> Path:
        """The server's database, in a directory of its own (the server keeps it 0700)."""
        return self.root / "server" / "server.db"

    @property
    def config_file(self) -> Path:
        return self.root / "shoes-vz.toml"

    def _write_config(self) -> Path:
        grpc_port = free_port()
        self.server_addr = f"127.0.0.1:{grpc_port}"
        self.reflink = can_reflink(self.root)
        r = self.root
        cfg = self.config_file
        cfg.unlink(missing_ok=True)
        os.close(os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # it holds the tokens
        cfg.write_text(f"""
[server]
listen = "{self.server_addr}"
metrics_listen = "127.0.0.1:{free_port()}"
status_listen = "127.0.0.1:{free_port()}"
db_path = "{self.db_path}"
shoes_token = "{self.token}"
enrollment_token = "{self.enrollment_token}"
sync_interval = 2.0
{self._extra("server")}
[agent]
server_addr = "{self.server_addr}"
enrollment_token = "{self.enrollment_token}"
driver = "sim"
state_dir = "{r / 'agent'}"
templates_dir = "{r / 'templates'}"
runners_dir = "{self.runners_dir}"
runner_state_file = "{self.state_file}"
lease_file = "{r / 'dhcpd_leases'}"
notify_listen = "0.0.0.0:{free_port()}"
metrics_listen = "127.0.0.1:{free_port()}"
max_runners = {self.max_runners}
host_vm_limit = {self.max_runners}   # sim guests: no Apple limit to respect
sim_boot_delay = {self.boot_delay}
sim_restore_delay = {self.restore_delay}
guest_poll_interval = {self.guest_poll_interval}
stop_grace = 2.0
allow_copy = {'false' if self.reflink else 'true'}
evidence_for_every_runner = {'true' if self.keep_evidence else 'false'}
{self._extra("agent")}""" + "".join(f"driver_options.{k} = {json.dumps(v)}\n" for k, v in self.driver_options.items()))
        return cfg

    def _extra(self, table: str) -> str:
        """Further settings of `table` as TOML lines (the values JSON-spelled, which TOML reads alike)."""
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.extra[table].items())

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        # the template's default user: `runner` as root (a guest user of its own, in either sim mode), else
        # this user (a loopback guest's sshd runs as it)
        await asyncio.to_thread(init_sim, self.root / "templates", TEMPLATE)
        await self.spawn("server")
        await self.wait_server()
        await self.spawn("agent")
        await self.wait_agent()

    async def spawn(self, name: str) -> None:
        """Start the server or the agent process with this stack's config (again, after it was killed:
        the chaos harness, tests/chaos.py); its output goes to NAME.log."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SHOESVZ_CONFIG", None)
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = await asyncio.create_subprocess_exec(
                # verbose: our debug lines (--verbose) and the libraries' too (--debug)
                sys.executable, "-m", "shoes_vz.cli.main", *(["--debug"] if self.verbose else []), name,
                "--config", str(self.config_file), *(["--verbose"] if self.verbose else []),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True,  # a Ctrl-C is for `up`, which stops them in order (stop())
            )

    async def describe_driver(self) -> str:
        """What a sim VM is on this host (namespaced, or the less faithful loopback mode), as it says."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoes_vz.vm.process", "--describe", "--driver", "sim",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return out.decode(errors="replace").strip()

    async def wait_server(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.server_addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                self._check_alive("server")
                try:
                    r = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():  # gRPC turns our cancellation into CANCELLED
                        raise asyncio.CancelledError from None
                await asyncio.sleep(0.05)
        raise ShoesVzError(f"the server did not come up within {timeout:.0f}s (log: {self.root / 'server.log'})")

    async def wait_agent(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        db = self.db_path
        while time.monotonic() < deadline:
            self._check_alive("agent")
            online = await asyncio.to_thread(_agents_online, db)
            if online:
                return
            await asyncio.sleep(0.05)
        raise ShoesVzError(f"the agent did not connect within {timeout:.0f}s (log: {self.root / 'agent.log'})")

    async def wait_free_warm_slots(self, template: str, count: int, timeout: float = 20.0) -> None:
        """Until the server has heard (with an agent's Sync) that `count` warm slots of `template` are free."""
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(_free_warm_slots, self.db_path, template) != count:
            self._check_alive("agent")
            if time.monotonic() > deadline:
                raise ShoesVzError(f"the server never saw {count} free warm slots of {template} within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    def _check_alive(self, name: str) -> None:
        p = self.procs[name]
        if p.returncode is not None:
            log = self.root / f"{name}.log"
            lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            said = f": {lines[-1].removeprefix('error: ')}" if lines else ""
            raise ShoesVzError(f"the {name} exited with status {p.returncode}{said} (log: {log})")

    async def stop(self) -> None:
        # the agent first: on SIGTERM it keeps VMs (a restart re-adopts them), so tear them down here
        for name in ("agent", "server"):
            p = self.procs.get(name)
            if p is None or p.returncode is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), 15)
            except TimeoutError:
                p.kill()
                await p.wait()
        await asyncio.to_thread(self._reap_vms)
        await asyncio.to_thread(self._sweep_network)

    def _reap_vms(self, settle: float = 5.0) -> None:
        """Kill the VM processes the agent left running, then give their guests (which die with
        them, a moment later) time to be gone."""
        for b in Bundle.all_in(self.runners_dir):
            pid = b.lock_holder()
            if pid and pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            b.kill_strays()
        deadline = time.monotonic() + settle
        while _pids_mentioning(str(self.root)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _sweep_network(self) -> None:
        """A dead holder's bridge waits for the agent's next VM, which a stopped stack never starts."""
        from shoes_vz.vm.process import sweep_sim_network

        def log(line: str) -> None:
            with open(self.root / "agent.log", "a") as f:
                f.write(f"stack: {line}\n")

        sweep_sim_network(self.root / "dhcpd_leases", log)

    def leftovers(self, wait: float = 10.0) -> list[str]:
        """Bundles, live vm processes or sim network links still here (after every runner was deleted:
        none). A namespaced sim's bridge outlives its last VM by a couple of seconds: wait that long."""
        deadline = time.monotonic() + wait
        while True:
            left = [str(b.path) for b in Bundle.all_in(self.runners_dir)]
            left += [f"pid {pid}" for pid in _pids_mentioning(str(self.root))]
            left += [f"link {name}" for name in sim_links(self.root / "dhcpd_leases")]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def _agents_online(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            return int(c.execute("SELECT COUNT(*) FROM agents WHERE online=1").fetchone()[0])
    except sqlite3.Error:
        return 0


def _free_warm_slots(db: Path, template: str) -> int:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            rows = c.execute("SELECT templates FROM agents WHERE online=1").fetchall()
    except sqlite3.Error:
        return 0
    held = [t for (raw,) in rows for t in json.loads(raw)]
    return sum(int(t.get("free_warm_slots", 0)) for t in held if t.get("name") == template)


def sim_links(lease_file: Path) -> list[str]:
    """Network links a namespaced sim made for the network of `lease_file` (their alias names it)."""
    mine = f"shoes-vz sim {lease_file.resolve()}"
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir("/sys/class/net")):
            with contextlib.suppress(OSError):
                alias = Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
                if alias == mine or alias.startswith(mine + " "):
                    found.append(name)
    return found


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions `text` (Linux /proc; empty elsewhere)."""
    found = []
    me = os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for p in proc.iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (p / "cmdline").read_bytes():
                found.append(int(p.name))
    return found
