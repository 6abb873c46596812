"""The in-guest runner-agent as a real process (DESIGN §3.4): notify, /health, /status, /exec."""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import shoes_vz.guest.runner_agent as runner_agent_module

GUEST_IP = "127.100.0.9"  # any 127/8 address is local on Linux: the "guest" address
GUEST_MAC = "02:00:00:00:00:09"
SRC = Path(runner_agent_module.__file__)


# -- a notify receiver (the host agent's side) -----------------------------------------------------


@dataclass
class Receiver:
    url: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reject_first: int = 0
    got: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            rec = state["r"]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rec.calls.append((self.client_address[0], body))
            status = 503 if len(rec.calls) <= rec.reject_first else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            if status == 200:
                rec.got.set()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(url=f"http://127.0.0.1:{server.server_port}/notify-ip")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state["r"]
    server.shutdown()
    server.server_close()


# -- the agent process --------------------------------------------------------------------------


@dataclass
class GuestAPI:
    """The runner-agent's HTTP API at GUEST_IP:port, with the token it wrote to token_file."""

    port: int
    token_file: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(GUEST_IP, self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def exec(self, body: Any, token: str | None = None, timeout: float = 30) -> tuple[int, dict[str, Any]]:
        auth = {"Authorization": f"Bearer {token or self.token}"}
        return self.request("POST", "/exec", body, auth, timeout)

    def state(self) -> str:
        status, body = self.request("GET", "/status")
        assert status == 200
        return str(body["state"])


@dataclass
class AgentProc(GuestAPI):
    """A runner-agent process."""

    proc: subprocess.Popen[bytes]
    stderr: Path
    runner_dir: Path

    def log(self) -> str:
        return self.stderr.read_text()


def start_agent(tmp_path: Path, notify_url: str, *extra: str) -> AgentProc:
    runner_dir = tmp_path / "actions-runner"
    runner_dir.mkdir(exist_ok=True)
    stderr = tmp_path / "agent.log"
    token_file = tmp_path / "token"
    argv = [
        sys.executable, "-m", "shoes_vz.guest.runner_agent",
        "--notify-url", notify_url, "--listen", f"{GUEST_IP}:0", "--runner-dir", str(runner_dir),
        "--ip", GUEST_IP, "--mac", GUEST_MAC, "--runner-id", "runner-1", "--token-file", str(token_file),
        *extra,
    ]
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(rf"listening address={re.escape(GUEST_IP)}:(\d+)", stderr.read_text())
        if m:
            return AgentProc(int(m.group(1)), token_file, proc, stderr, runner_dir)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"runner-agent did not start:\n{stderr.read_text()}")


@pytest.fixture
def agent(tmp_path: Path, receiver: Receiver) -> Iterator[AgentProc]:
    a = start_agent(tmp_path, receiver.url)
    yield a
    a.proc.send_signal(signal.SIGTERM)
    try:
        assert a.proc.wait(10) == 0, a.log()
    finally:
        if a.proc.poll() is None:
            a.proc.kill()


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- notify -------------------------------------------------------------------------------------


def test_notify_at_once_from_the_guest_address_without_a_secret(agent: AgentProc, receiver: Receiver) -> None:
    assert receiver.got.wait(10), agent.log()
    [(source, body)] = receiver.calls
    assert source == GUEST_IP, "the notify must leave from --ip (the agent matches by source address)"
    # a hint only: the /exec token travels over the runner channel, never over the guests' network
    assert body == {"runner_id": "runner-1", "ip_address": GUEST_IP, "mac_address": GUEST_MAC}
    assert agent.token not in json.dumps(body)
    assert len(agent.token) >= 32
    assert agent.token_file.stat().st_mode & 0o777 == 0o600
    # the agent logs after reading the response, which may be just after the receiver saw the request
    wait_for(lambda: "notify.ok" in agent.log(), what="the notify.ok line")
    assert "notify.ok attempt=1" in agent.log(), agent.log()


def test_notify_retries_with_backoff_while_serving(tmp_path: Path, receiver: Receiver) -> None:
    receiver.reject_first = 3
    a = start_agent(tmp_path, receiver.url)
    try:
        assert a.request("GET", "/health") == (200, {"status": "ok", "version": runner_agent_module.VERSION})
        assert receiver.got.wait(10), a.log()
        assert len(receiver.calls) == 4
        assert all("token" not in c[1] for c in receiver.calls)
        assert a.log().count("notify.rejected") == 3
    finally:
        a.proc.kill()
        a.proc.wait()


def test_notify_when_the_host_comes_up_late(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = start_agent(tmp_path, f"http://127.0.0.1:{port}/notify-ip")
    got: list[dict[str, Any]] = []

    class Late(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    try:
        wait_for(lambda: "notify.error" in a.log(), what="a refused notify")
        server = ThreadingHTTPServer(("127.0.0.1", port), Late)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            wait_for(lambda: bool(got), timeout=10, what="the late notify")  # backoff is capped at ~1 s
        finally:
            server.shutdown()
            server.server_close()
        assert got[0]["ip_address"] == GUEST_IP and "token" not in got[0]
    finally:
        a.proc.kill()
        a.proc.wait()


# -- /health and /status ------------------------------------------------------------------------


def write_runner_file(runner_dir: Path, bom: bool = True) -> None:
    data = json.dumps({"agentId": 42, "agentName": "shoes-vz-runner-1", "poolId": 1, "gitHubUrl": "https://x"})
    (runner_dir / ".runner").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())


def fake_process(name: str, cwd: Path) -> subprocess.Popen[bytes]:
    # argv[0] is what the runner-agent looks at; the cwd ties the process to a runner directory
    return subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 300"], cwd=cwd)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def diag_log(runner_dir: Path, *lines: str) -> None:
    diag = runner_dir / "_diag"
    diag.mkdir(exist_ok=True)
    with open(diag / "Runner_20260101-000000-utc.log", "a") as f:
        for line in lines:
            f.write(f"[2026-01-01 00:00:00Z INFO Terminal] WRITE LINE: {line}\n")


def test_health(agent: AgentProc) -> None:
    assert agent.request("GET", "/health")[0] == 200
    assert agent.request("GET", "/nope")[0] == 404


def test_status_transitions_offline_preparing_idle_running_finished(agent: AgentProc) -> None:
    rd = agent.runner_dir
    assert agent.request("GET", "/status") == (200, {"runner_id": "", "runner_name": "", "state": "OFFLINE"})

    write_runner_file(rd)  # config.sh done, run.sh not started yet
    assert agent.state() == "PREPARING"
    listener = fake_process("Runner.Listener", rd)
    try:
        diag_log(rd, "Connecting to the GitHub server")  # not a relevant line
        # PREPARING is also the state before the listener runs: wait until `ps` shows it under its name
        wait_for(lambda: bool(runner_agent_module.runner_processes(str(rd))["Runner.Listener"]),
                 what="the fake listener to exec")
        assert agent.state() == "PREPARING"
        status, body = agent.request("GET", "/status")
        assert body == {"runner_id": "42", "runner_name": "shoes-vz-runner-1", "state": "PREPARING"}

        diag_log(rd, "√ Connected to GitHub", "", "2026-01-01 00:00:01Z: Listening for Jobs")
        assert agent.state() == "IDLE"

        diag_log(rd, "2026-01-01 00:00:05Z: Running job: build")
        assert agent.state() == "RUNNING"

        diag_log(rd, "2026-01-01 00:01:05Z: Job build completed with result: Succeeded")
        assert agent.state() == "FINISHED"
    finally:
        stop(listener)
    assert agent.state() == "FINISHED"
    log = agent.log()
    # the transitions in order (other lines, e.g. the notify's, may fall between them)
    states = re.findall(r"state state=(\w+)", log)
    assert states == ["OFFLINE", "PREPARING", "IDLE", "RUNNING", "FINISHED"], log


def test_status_listener_gone_after_running_is_finished(agent: AgentProc) -> None:
    rd = agent.runner_dir
    write_runner_file(rd, bom=False)
    listener = fake_process("Runner.Listener", rd)
    worker = fake_process("Runner.Worker", rd)
    try:
        wait_for(lambda: agent.state() == "RUNNING", what="RUNNING from a live worker")  # no log yet
        stop(worker)
        assert agent.state() == "PREPARING"  # listener alive, no relevant log line
        diag_log(rd, "Listening for Jobs", "Running job: test")
        assert agent.state() == "RUNNING"
    finally:
        stop(listener)
    assert agent.state() == "FINISHED"  # the ephemeral runner exited after its job


def test_status_ignores_runner_processes_of_other_guests(agent: AgentProc, tmp_path: Path) -> None:
    # sim guests share one host: another guest's listener must not count as ours
    other = tmp_path / "other-guest"
    other.mkdir()
    write_runner_file(agent.runner_dir)
    theirs = fake_process("Runner.Listener", other)
    try:
        time.sleep(0.2)
        assert agent.state() == "PREPARING"
        diag_log(agent.runner_dir, "Listening for Jobs")
        assert agent.state() == "FINISHED"  # a log says it ran, but no listener of ours is alive
    finally:
        stop(theirs)


def test_status_uses_the_newest_diag_log(agent: AgentProc) -> None:
    rd = agent.runner_dir
    write_runner_file(rd)
    listener = fake_process("Runner.Listener", rd)
    try:
        diag = rd / "_diag"
        diag.mkdir()
        old = diag / "Runner_20250101-000000-utc.log"
        old.write_text("Running job: old\n")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        (diag / "Runner_20260101-000000-utc.log").write_text("Listening for Jobs\n")
        (diag / "Worker_20260101-000000-utc.log").write_text("Running job: not a Runner_ log\n")
        wait_for(lambda: agent.state() == "IDLE", what="IDLE from the newest log")
    finally:
        stop(listener)


# -- /exec --------------------------------------------------------------------------------------


def test_exec_requires_the_bearer_token(agent: AgentProc) -> None:
    body = {"command": ["true"]}
    assert agent.request("POST", "/exec", body)[0] == 403
    assert agent.request("POST", "/exec", body, {"Authorization": "Bearer wrong"})[0] == 403
    assert agent.request("POST", "/exec", body, {"Authorization": f"Basic {agent.token}"})[0] == 403
    assert agent.request("POST", "/exec", body, {"Authorization": "Bearer "})[0] == 403
    status, res = agent.exec(body)
    assert status == 200 and res["exit_code"] == 0
    assert "exec.denied" in agent.log()


def test_exec_runs_argv_and_shell_strings(agent: AgentProc) -> None:
    status, res = agent.exec({"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    assert (status, res) == (200, {"exit_code": 3, "stdout": "out\n", "stderr": "err\n",
                                   "truncated": False, "timed_out": False})
    status, res = agent.exec({"command": "pwd; echo $((6*7))", "cwd": str(agent.runner_dir)})
    assert res["stdout"] == f"{agent.runner_dir}\n42\n" and res["exit_code"] == 0
    status, res = agent.exec({"command": ["/no/such/binary"]})
    assert status == 200 and res["exit_code"] == 127 and "/no/such/binary" in res["stderr"]


@pytest.mark.parametrize(
    "body",
    [{}, {"command": []}, {"command": ""}, {"command": [1, 2]}, {"command": "true", "timeout": -1},
     {"command": "true", "timeout": "5"}, {"command": "true", "timeout": True}, ["true"]],
)
def test_exec_rejects_bad_requests(agent: AgentProc, body: Any) -> None:
    status, res = agent.exec(body)
    assert status == 400 and res["error"]


def test_exec_output_is_bounded(agent: AgentProc) -> None:
    status, res = agent.exec({"command": ["python3", "-c", "import sys; sys.stdout.write('x' * 300000); "
                                          "sys.stderr.write('e' * 10)"]})
    assert status == 200
    assert res["exit_code"] == 0
    assert len(res["stdout"]) == 64 * 1024
    assert res["stderr"] == "e" * 10
    assert res["truncated"] is True


def test_exec_timeout_kills_the_process_group(agent: AgentProc, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    command = f"sleep 300 & echo $! > {pidfile}; echo started; wait"
    status, res = agent.exec({"command": command, "timeout": 0.5})
    elapsed = time.monotonic() - started
    assert status == 200
    assert res["timed_out"] is True and res["exit_code"] == -signal.SIGKILL
    assert res["stdout"] == "started\n"
    assert elapsed < 10
    child = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # a zombie is dead too (reaped by init later)
        with open(f"/proc/{child}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")

    wait_for(gone, what="the command's child to be killed")


def test_exec_timeout_is_capped(agent: AgentProc) -> None:
    status, res = agent.exec({"command": ["true"], "timeout": 10**9})
    assert status == 200 and res["exit_code"] == 0


# -- contract -----------------------------------------------------------------------------------


def test_runner_agent_imports_only_the_stdlib_and_parses_as_python_3_9() -> None:
    source = SRC.read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # guests may have an old python3
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the module is copied into guests alone"
            imported.add((node.module or "").split(".")[0])
    outside = {m for m in imported if m not in sys.stdlib_module_names and m != "__future__"}
    assert not outside, f"runner_agent must be stdlib only, imports {outside}"
    assert "importlib" not in imported and "__import__" not in source, "no dynamic imports either"


def test_runs_as_a_lone_file_with_a_bare_interpreter(tmp_path: Path) -> None:
    # what a guest image gets: the single file and python3 -I (no site-packages, no shoes_vz)
    copy = tmp_path / "runner_agent.py"
    copy.write_text(SRC.read_text())
    argv = [sys.executable, "-I", str(copy), "--help"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "--notify-url" in out.stdout and "--runner-dir" in out.stdout


def test_console_script_is_declared() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert eps.get("shoes-vz-runner-agent") == "shoes_vz.guest.runner_agent:main"


# -- auto notify URL --------------------------------------------------------------------------------


def test_gateway_from_route_output() -> None:
    route_get = ("   route to: default\ndestination: default\n       mask: default\n    gateway: 192.168.64.1\n"
                 "  interface: en0\n      flags: <UP,GATEWAY,DONE,STATIC,PRFCLONING,GLOBAL>\n")
    assert runner_agent_module.gateway_from_route_get(route_get) == "192.168.64.1"
    assert runner_agent_module.gateway_from_route_get("route: writing to routing socket: not in table\n") == ""
    proc_route = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                  "en0\t0040A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
                  "en0\t00000000\t0140A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert runner_agent_module.gateway_from_proc_route(proc_route) == "192.168.64.1"
    assert runner_agent_module.gateway_from_proc_route(proc_route.splitlines()[0]) == ""


def test_auto_notify_url_is_the_default_gateway() -> None:
    shown = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout.split()
    if "via" not in shown:  # no gateway yet: not ready, so the notify retries instead of posting nowhere
        with pytest.raises(runner_agent_module.NotReady, match="no default gateway"):
            runner_agent_module.Announcer("auto", "r1").url()
        return
    gateway = shown[shown.index("via") + 1]
    assert runner_agent_module.Announcer("auto", "r1").url() == f"http://{gateway}:8081/notify-ip"
    assert runner_agent_module.Announcer("auto:9081", "r1").url() == f"http://{gateway}:9081/notify-ip"
    assert runner_agent_module.Announcer("http://10.0.0.1:1/x", "r1").url() == "http://10.0.0.1:1/x"


@pytest.mark.parametrize("value", ["ftp://h/x", "auto:", "auto:0", "auto:99999", "http://", "http://h:port/x"])
def test_bad_notify_urls_stop_the_agent_at_start(tmp_path: Path, value: str) -> None:
    out = subprocess.run([sys.executable, str(SRC), "--notify-url", value, "--runner-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--notify-url" in out.stderr, out.stderr


# -- re-announce after a restore (DESIGN §12) --------------------------------------------------------


class FakeClocks:
    """A guest's wall and monotonic clocks, moved by the test."""

    def __init__(self) -> None:
        self.wall_now, self.mono_now = 1_800_000_000.0, 5_000.0

    def wall(self) -> float:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def run(self, seconds: float) -> None:
        self.wall_now += seconds
        self.mono_now += seconds


def test_resume_watch_tells_a_restore_from_normal_ticks() -> None:
    c = FakeClocks()
    watch = runner_agent_module.ResumeWatch(lambda _: None, gap=5.0, tick=1.0, wall=c.wall, mono=c.mono)
    c.run(1.0)
    assert watch.check() == 0.0
    c.run(1.3)  # a late tick on a busy guest
    assert watch.check() == 0.0
    c.wall_now += 0.8  # an NTP step of under a second
    c.run(1.0)
    assert watch.check() == 0.0
    # restored: the counter stood still while the VM was saved, then timed set the wall clock
    c.wall_now += 3600
    c.run(1.0)
    assert watch.check() == pytest.approx(3600)
    c.run(1.0)
    assert watch.check() == 0.0, "one restore, one alarm"
    # restored on a host where the guest counter kept running while the vCPUs were frozen
    c.run(600)
    assert watch.check() == pytest.approx(599)
    c.wall_now -= 3600  # the clock set back is not a restore
    c.run(1.0)
    assert watch.check() == 0.0


def test_dhcp_renew_only_on_macos_as_root() -> None:
    assert runner_agent_module.dhcp_renew_argv("darwin", 0) == ["ipconfig", "set", "en0", "DHCP"]
    assert runner_agent_module.dhcp_renew_argv("darwin", 501) is None
    assert runner_agent_module.dhcp_renew_argv("linux", 0) is None


def hello(runner_id: str = "runner-1", **kw: Any) -> dict[str, Any]:
    return runner_agent_module.parse_hello({
        "shoes_vz": "hello", "runner_id": runner_id, "nonce": "ab" * 16, "time": time.time(),
        "user_ca": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl3Zm5jZW5jb2RlZGtleWJ5dGVzMTIzNDU2Nzg5MA test-ca", **kw})


def test_a_restored_guest_renews_its_lease_and_notifies_but_keeps_its_token_until_the_host_says_so(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Its clocks tell a restore (the host's re-announce over the channel is the main way): DHCP renew and
    a notify. The token changes only on the host's hello, so the host always knows it."""
    clocks, renewed = FakeClocks(), threading.Event()
    token_file, state = tmp_path / "token", tmp_path / "state"
    state.mkdir()
    agent = runner_agent_module.Agent(
        str(tmp_path), runner_agent_module.Announcer(receiver.url, "runner-1", GUEST_IP, GUEST_MAC),
        str(token_file), resume_tick=0.02, wall=clocks.wall, mono=clocks.mono, renew=renewed.set,
        state_dir=str(state), clock=runner_agent_module.Clock("model"), ip=GUEST_IP, mac=GUEST_MAC,
    )
    server = runner_agent_module.Server((GUEST_IP, 0), agent)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    guest = GuestAPI(server.server_port, token_file)
    try:
        agent.start()
        assert receiver.got.wait(10)
        assert not renewed.is_set(), "no DHCP renew at boot"
        first = agent.on_hello(hello())
        assert first["token"] == guest.token == agent.token
        clocks.wall_now += 3600  # the VM was saved an hour ago and has just been restored
        wait_for(lambda: len(receiver.calls) == 2, what="the re-announce")
        assert receiver.calls[1] == receiver.calls[0]
        assert renewed.is_set(), "a restored guest asks for a DHCP renew"
        assert agent.token == first["token"]
        # the host's re-announce: a new token and host key, the old token dead
        second = agent.on_hello(hello("runner-2", reannounce=True))
        assert second["token"] != first["token"] and second["host_key"] != first["host_key"]
        assert guest.exec({"command": ["true"]}, token=first["token"])[0] == 403, "the slot's token is dead"
        assert guest.exec({"command": ["true"]})[1]["exit_code"] == 0
        assert (state / "principals").read_text() == "runner-2\n"
    finally:
        agent.stop()
        server.shutdown()
        server.server_close()


def test_sighup_reannounces_and_a_pending_notify_is_replaced(tmp_path: Path, receiver: Receiver) -> None:
    receiver.reject_first = 10**6  # the host does not accept yet
    a = start_agent(tmp_path, receiver.url)
    try:
        wait_for(lambda: "notify.rejected" in a.log(), what="a rejected notify")
        token = a.token
        a.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "notify.cancelled" in a.log(), what="the old notify cancelled")
        receiver.reject_first = 0
        assert receiver.got.wait(10), a.log()
        log = a.log()
        assert "reannounce reason=SIGHUP" in log
        assert "dhcp.renew.skipped" in log  # not a macOS guest
        assert a.token == token  # only the host's hello renews it
        assert a.exec({"command": ["true"]})[0] == 200
    finally:
        a.proc.kill()
        a.proc.wait()


# -- the runner channel's vsock address -----------------------------------------------------------


def test_sockaddr_vm_layouts_match_the_system_headers() -> None:
    """macOS <sys/vsock.h>: {u8 len, u8 family, u16 reserved, u32 port, u32 cid}, 12 bytes, packed;
    Linux <linux/vm_sockets.h>: {u16 family, u16 reserved, u32 port, u32 cid, u8 flags, u8 zero[3]}, 16."""
    import ctypes
    import struct

    mac = runner_agent_module.sockaddr_vm(8079, platform="darwin")
    assert ctypes.sizeof(mac) == 12
    assert bytes(mac) == struct.pack("=BBHII", 12, 40, 0, 8079, 0xFFFFFFFF)
    linux = runner_agent_module.sockaddr_vm(8079, 3, platform="linux")
    assert ctypes.sizeof(linux) == 16
    assert bytes(linux) == struct.pack("=HHIIB3x", 40, 0, 8079, 3, 0)
    import socket as _socket

    if hasattr(_socket, "AF_VSOCK"):  # CPython's own constant agrees where it has one
        assert _socket.AF_VSOCK == runner_agent_module.AF_VSOCK
    with pytest.raises(OSError, match="no sockaddr_vm layout"):
        runner_agent_module.sockaddr_vm(1, platform="win32")
