"""shoes-vz runner-agent: the small daemon inside each guest (DESIGN §3.4).

STDLIB ONLY, one module, Python >= 3.9: it is copied into guest images that have nothing else.
Do not import shoes_vz (or anything outside the standard library) here; a test enforces it.

At start it mints a random token and POSTs `{"runner_id", "ip_address", "mac_address", "token"}`
to the host's notify URL at once, retrying with short backoff while it already serves:

    GET  /health  -> 200 {"status": "ok"}
    GET  /status  -> {"runner_id", "runner_name", "state": OFFLINE|PREPARING|IDLE|RUNNING|FINISHED}
    POST /exec    -> bearer token; {"command": [argv...] | "sh string", "timeout": s, "cwd": dir}
                     -> {"exit_code", "stdout", "stderr", "truncated", "timed_out"}

The runner state comes from the GitHub Actions runner's files and processes: `.runner` (written by
config.sh), the `Runner.Listener` / `Runner.Worker` processes that belong to --runner-dir, and the
newest `_diag/Runner_*.log`.

After the VM is restored from a saved state (a warm slot, DESIGN §12) it re-announces itself: new
token, DHCP renew (macOS, root), notify again. It notices the restore from its clocks (ResumeWatch);
SIGHUP does the same on request.

`install` / `uninstall` (run inside a macOS guest as root) put this file at
/usr/local/libexec/shoes-vz-runner-agent and a LaunchDaemon plist in /Library/LaunchDaemons. The
program's shebang is the absolute path of an interpreter checked to run non-interactively (never
`/usr/bin/env python3`: launchd's PATH finds `/usr/bin/python3`, the Xcode Command Line Tools stub,
which without the tools shows an install prompt and exits, and KeepAlive respawns it in a loop);
the plist sets PATH for everything the daemon runs.
"""

# Annotations stay strings (PEP 563), so `str | None` and `dict[...]` below are fine on Python 3.9;
# runtime expressions must not use 3.10+ syntax or APIs.
from __future__ import annotations

import argparse
import contextlib
import glob
import hmac
import http.client
import json
import os
import plistlib
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.1.0"

OFFLINE, PREPARING, IDLE, RUNNING, FINISHED = "OFFLINE", "PREPARING", "IDLE", "RUNNING", "FINISHED"

OUTPUT_LIMIT = 64 * 1024  # per stream, for /exec
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
MAX_BODY = 1024 * 1024
LOG_TAIL_BYTES = 256 * 1024
NOTIFY_FIRST_DELAY, NOTIFY_MAX_DELAY, NOTIFY_DEADLINE = 0.05, 1.0, 120.0

LISTENER, WORKER = "Runner.Listener", "Runner.Worker"
_LOG_PATTERNS = (  # checked per line, newest line first: the last relevant line decides
    (re.compile(r"Job .* completed with result"), FINISHED),
    (re.compile(r"Running job"), RUNNING),
    (re.compile(r"Listening for Jobs"), IDLE),
)


def log(event: str, **fields: Any) -> None:
    """One line per event on stderr: `<utc time> runner-agent <event> k=v ...`."""
    parts = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runner-agent", event]
    for k, v in fields.items():
        parts.append(f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}")
    try:
        sys.stderr.write(" ".join(parts) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# -- the guest's own address ----------------------------------------------------------------------


def _run(argv: list[str], timeout: float = 5.0) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def detect_ip(notify_host: str) -> str:
    """The guest address: `ipconfig getifaddr en0` on macOS, else the route toward the host."""
    if sys.platform == "darwin":
        ip = _run(["ipconfig", "getifaddr", "en0"]).strip()
        if ip:
            return ip
    try:
        # connect() on UDP sends nothing: it only picks the source address the kernel would use
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((notify_host or "192.168.64.1", 9))
            return str(s.getsockname()[0])
    except OSError:
        return ""


def detect_mac(ip: str) -> str:
    """The MAC of the interface holding `ip` (macOS: en0). Best effort: "" when unknown."""
    if sys.platform == "darwin":
        m = re.search(r"\bether\s+([0-9a-fA-F:]{11,17})", _run(["ifconfig", "en0"]))
        return m.group(1).lower() if m else ""
    iface = ""
    if ip:
        for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].split("/")[0] == ip:
                iface = fields[1].rstrip(":")
                break
    if not iface:
        try:
            with open("/proc/net/route") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if len(fields) > 1 and fields[1] == "00000000":
                        iface = fields[0]
                        break
        except OSError:
            pass
    if iface:
        try:
            with open(f"/sys/class/net/{iface}/address") as f:
                mac = f.read().strip().lower()
            return "" if mac == "00:00:00:00:00:00" else mac
        except OSError:
            pass
    return ""


# -- IP notify -----------------------------------------------------------------------------------


DEFAULT_NOTIFY_PORT = 8081
AUTO = "auto"


def parse_notify_url(value: str) -> str:
    """`""` (no notify), `auto[:PORT]` (the default gateway, resolved at each attempt) or `http://host[:port]/path`."""
    if value == "" or value == AUTO:
        return value
    if value.startswith(AUTO + ":"):
        port = value[len(AUTO) + 1:]
        if port.isdigit() and 0 < int(port) < 65536:
            return value
        raise argparse.ArgumentTypeError(f"--notify-url auto:PORT wants a port number, got {value!r}")
    u = urllib.parse.urlsplit(value)
    try:
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        u = urllib.parse.urlsplit("")
    if u.scheme != "http" or not u.hostname:
        raise argparse.ArgumentTypeError(f"--notify-url must be auto[:PORT] or http://host[:port]/path, got {value!r}")
    return value


def gateway_from_route_get(text: str) -> str:
    """The gateway in `route -n get default` output (macOS)."""
    m = re.search(r"^\s*gateway:\s*(\d+\.\d+\.\d+\.\d+)\s*$", text, re.MULTILINE)
    return m.group(1) if m else ""


def gateway_from_proc_route(text: str) -> str:
    """The IPv4 default gateway in /proc/net/route (Linux: hex, little-endian)."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            try:
                return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
            except (ValueError, struct.error):
                continue
    return ""


def detect_gateway() -> str:
    """The default gateway: the NAT host for a VZ guest. "" while DHCP has not configured one yet."""
    if sys.platform == "darwin":
        return gateway_from_route_get(_run(["route", "-n", "get", "default"]))
    try:
        with open("/proc/net/route") as f:
            return gateway_from_proc_route(f.read())
    except OSError:
        return ""


class NotReady(Exception):
    """The guest cannot announce itself yet (no address or gateway: DHCP is still running)."""


class Announcer:
    """Where a notify goes and what it says. Addresses are looked up again at every attempt: at boot
    DHCP may finish after launchd started us, and a restored guest may have renewed its lease."""

    def __init__(self, notify_url: str, runner_id: str, ip: str = "", mac: str = "") -> None:
        self.notify_url, self.runner_id, self.ip, self.mac = notify_url, runner_id, ip, mac

    def url(self) -> str:
        if self.notify_url != AUTO and not self.notify_url.startswith(AUTO + ":"):
            return self.notify_url
        _, _, port = self.notify_url.partition(":")
        gateway = detect_gateway()
        if not gateway:
            raise NotReady("no default gateway yet")
        return f"http://{gateway}:{port or DEFAULT_NOTIFY_PORT}/notify-ip"

    def body(self, url: str, token: str) -> dict[str, str]:
        ip = self.ip or detect_ip(urllib.parse.urlsplit(url).hostname or "")
        if not ip:
            raise NotReady("no IPv4 address yet")
        mac = self.mac or detect_mac(ip)
        return {"runner_id": self.runner_id, "ip_address": ip, "mac_address": mac, "token": token}

    @property
    def source_ip(self) -> str | None:
        return self.ip or None  # when given, the notify leaves from it (the host matches by source address)


class Notifier(threading.Thread):
    """POSTs the notify at once, then with 50 ms doubling backoff (capped) until accepted, the deadline
    passes or it is cancelled (a newer announcement replaces it)."""

    def __init__(self, announcer: Announcer, token: str, deadline: float,
                 prepare: Callable[[], None] | None = None) -> None:
        super().__init__(name="notify", daemon=True)
        self.announcer, self.token, self.deadline, self.prepare = announcer, token, deadline, prepare
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self.ok = False

    def cancel(self) -> None:
        self.cancelled.set()

    def _attempt(self) -> tuple[int, str]:
        url = self.announcer.url()
        body = self.announcer.body(url, self.token)
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"notify URL must be http://host[:port]/path, got {url!r}")
        source = self.announcer.source_ip
        conn = http.client.HTTPConnection(
            u.hostname, u.port or 80, timeout=2.0, source_address=(source, 0) if source else None,
        )
        try:
            payload = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", "User-Agent": f"shoes-vz-runner-agent/{VERSION}"}
            conn.request("POST", u.path or "/", body=payload, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(512).decode(errors="replace").strip()
        finally:
            conn.close()

    def run(self) -> None:
        started = time.monotonic()
        delay, attempt = NOTIFY_FIRST_DELAY, 0
        try:
            if self.prepare is not None:
                self.prepare()
            while not self.cancelled.is_set():
                attempt += 1
                try:
                    status, text = self._attempt()
                    if 200 <= status < 300:
                        self.ok = True
                        log("notify.ok", attempt=attempt, status=status,
                            elapsed_ms=int((time.monotonic() - started) * 1000))
                        return
                    log("notify.rejected", attempt=attempt, status=status, body=text[:200])
                except ValueError as e:
                    log("notify.giveup", error=str(e))
                    return
                except NotReady as e:
                    log("notify.waiting", attempt=attempt, reason=str(e))
                except (OSError, http.client.HTTPException) as e:
                    log("notify.error", attempt=attempt, error=f"{type(e).__name__}: {e}")
                if time.monotonic() - started + delay > self.deadline:
                    log("notify.giveup", attempts=attempt, after_s=round(time.monotonic() - started, 1))
                    return
                if self.cancelled.wait(delay):
                    break
                delay = min(delay * 2, NOTIFY_MAX_DELAY)
            log("notify.cancelled", attempts=attempt)
        finally:
            self.done.set()


# -- re-announce after a restore ---------------------------------------------------------------------

RESUME_GAP, RESUME_TICK = 5.0, 1.0


class ResumeWatch(threading.Thread):
    """Notices that the guest stood still between two ticks: its VM was paused and saved, then restored
    (a warm slot, DESIGN §12). A restored guest cannot be told by the kernel; what it sees is time:

    - the wall clock moves further than the monotonic clock: the counter stood still while the VM was
      saved, and timed/NTP then stepped the wall clock to the real time;
    - the monotonic clock moves far past one tick: the counter kept running while the vCPUs were frozen.

    Either beyond `gap` seconds counts (a busy guest delays a tick by milliseconds, not seconds; a false
    alarm costs one extra notify). Both clocks are injectable so tests can freeze and jump them."""

    def __init__(self, on_resume: Callable[[float], None], gap: float = RESUME_GAP, tick: float = RESUME_TICK,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="resume-watch", daemon=True)
        self.on_resume, self.gap, self.tick, self.wall, self.mono = on_resume, gap, tick, wall, mono
        self.stopped = threading.Event()
        self._last = (wall(), mono())

    def check(self) -> float:
        """Seconds the guest seems to have stood still since the last check; 0.0 when not beyond `gap`."""
        now = (self.wall(), self.mono())
        d_wall, d_mono = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        frozen = max(d_wall - d_mono, d_mono - self.tick)
        return frozen if frozen > self.gap else 0.0

    def run(self) -> None:
        while not self.stopped.wait(self.tick):
            frozen = self.check()
            if frozen:
                log("resumed", frozen_s=round(frozen, 1))
                self.on_resume(frozen)

    def stop(self) -> None:
        self.stopped.set()


def dhcp_renew_argv(platform: str, euid: int) -> list[str] | None:
    """How to ask for a DHCP renew: only a macOS guest running as root can (and needs to)."""
    return ["ipconfig", "set", "en0", "DHCP"] if platform == "darwin" and euid == 0 else None


def renew_dhcp() -> None:
    argv = dhcp_renew_argv(sys.platform, os.geteuid())
    if argv is None:
        log("dhcp.renew.skipped", reason="not a macOS guest running as root")
        return
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        log("dhcp.renew", exit_code=done.returncode, output=(done.stdout + done.stderr).strip()[:200])
    except (OSError, subprocess.SubprocessError) as e:
        log("dhcp.renew.failed", error=str(e))


# -- runner state --------------------------------------------------------------------------------


def read_runner_file(runner_dir: str) -> dict[str, Any] | None:
    """The `.runner` JSON (config.sh writes it with a UTF-8 BOM), or None when not configured."""
    try:
        with open(os.path.join(runner_dir, ".runner"), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except ValueError:
        return {}  # being written: configured, details not readable yet
    return data if isinstance(data, dict) else {}


def runner_processes(runner_dir: str) -> dict[str, list[int]]:
    """pids of Runner.Listener / Runner.Worker belonging to `runner_dir` (several guests may share a host
    in the sim driver, so a process counts only if its path or working directory is in runner_dir)."""
    found: dict[str, list[int]] = {LISTENER: [], WORKER: []}
    root = os.path.realpath(runner_dir)
    for line in _run(["ps", "-A", "-o", "pid=,args="]).splitlines():
        fields = line.split(None, 2)
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        pid, argv0 = int(fields[0]), fields[1]
        name = os.path.basename(argv0)
        if name not in found or pid == os.getpid():
            continue
        if os.path.isabs(argv0):
            mine = _inside(os.path.realpath(argv0), root)
        else:
            cwd = _process_cwd(pid)
            mine = cwd is None or _inside(cwd, root)  # unknown cwd (macOS): trust the name
        if mine:
            found[name].append(pid)
    return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _process_cwd(pid: int) -> str | None:
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def newest_diag_log(runner_dir: str) -> str | None:
    logs = glob.glob(os.path.join(runner_dir, "_diag", "Runner_*.log"))
    if not logs:
        return None

    def key(p: str) -> tuple[float, str]:
        try:
            return (os.path.getmtime(p), p)
        except OSError:
            return (0.0, p)

    return max(logs, key=key)


def state_from_log(path: str | None) -> str | None:
    """The state named by the last relevant line of the log's tail, or None."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        for pattern, state in _LOG_PATTERNS:
            if pattern.search(line):
                return state
    return None


class RunnerWatch:
    """Turns files and processes into OFFLINE/PREPARING/IDLE/RUNNING/FINISHED."""

    def __init__(self, runner_dir: str) -> None:
        self.runner_dir = runner_dir
        self._lock = threading.Lock()
        self._seen_alive = False
        self._last = ""

    def status(self) -> dict[str, Any]:
        with self._lock:
            info = read_runner_file(self.runner_dir)
            runner_id, runner_name = "", ""
            if info is None:
                state = OFFLINE
            else:
                agent_id, runner_name = info.get("agentId"), str(info.get("agentName") or "")
                runner_id = str(agent_id) if agent_id not in (None, "") else runner_name
                procs = runner_processes(self.runner_dir)
                listener, worker = bool(procs[LISTENER]), bool(procs[WORKER])
                if listener or worker:
                    self._seen_alive = True
                from_log = state_from_log(newest_diag_log(self.runner_dir))
                if from_log == FINISHED:
                    state = FINISHED
                elif worker:
                    state = RUNNING  # a worker exists only while a job runs
                elif listener:
                    state = from_log or PREPARING
                elif self._seen_alive or from_log is not None:
                    state = FINISHED  # the runner was up and is gone (ephemeral runners exit after one job)
                else:
                    state = PREPARING  # configured, run.sh not started yet
            if state != self._last:
                log("state", state=state, previous=self._last or "-", runner_id=runner_id)
                self._last = state
            return {"runner_id": runner_id, "runner_name": runner_name, "state": state}


# -- /exec ---------------------------------------------------------------------------------------


class _Capture(threading.Thread):
    """Drains a pipe, keeping the first OUTPUT_LIMIT bytes (draining on, so the child never blocks)."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(daemon=True)
        self.pipe, self.data, self.truncated = pipe, bytearray(), False

    def run(self) -> None:
        try:
            while True:
                chunk = self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536)
                if not chunk:
                    return
                room = OUTPUT_LIMIT - len(self.data)
                if len(chunk) > room:
                    self.truncated = True
                if room > 0:
                    self.data += chunk[:room]
        except (OSError, ValueError):
            return


def run_command(command: Any, timeout: float, cwd: str | None = None) -> dict[str, Any]:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        # own session = own process group, so a timeout kills the command and all its children
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
    except OSError as e:
        return {"exit_code": 127, "stdout": "", "stderr": f"{argv[0]}: {e.strerror or e}\n",
                "truncated": False, "timed_out": False}
    out, err = _Capture(proc.stdout), _Capture(proc.stderr)
    out.start()
    err.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
    # background children that keep the pipes open must not hold the response forever
    for t in (out, err):
        t.join(1.0)
    for pipe in (proc.stdout, proc.stderr):
        try:
            pipe.close()  # type: ignore[union-attr]
        except OSError:
            pass
    return {
        "exit_code": proc.returncode,
        "stdout": bytes(out.data).decode("utf-8", errors="replace"),
        "stderr": bytes(err.data).decode("utf-8", errors="replace"),
        "truncated": out.truncated or err.truncated,
        "timed_out": timed_out,
    }


# -- HTTP ----------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server_version = f"shoes-vz-runner-agent/{VERSION}"
    protocol_version = "HTTP/1.1"

    @property
    def agent(self) -> Agent:
        return self.server.agent  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # requests are logged as events below, not in the http.server format

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, {"status": "ok", "version": VERSION})
        elif path == "/status":
            self._json(200, self.agent.watch.status())
        else:
            self._json(404, {"error": f"no such endpoint {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._json(413 if length > MAX_BODY else 400, {"error": "bad Content-Length"})
            return
        raw = self.rfile.read(length) if length else b""
        if path != "/exec":
            self._json(404, {"error": f"no such endpoint {path}"})
            return
        if not self._authorized():
            log("exec.denied", client=self.client_address[0])
            self._json(403, {"error": "missing or wrong bearer token"})
            return
        try:
            req = json.loads(raw.decode("utf-8"))
            command, timeout, cwd = parse_exec(req)
        except ValueError as e:
            self._json(400, {"error": str(e)})
            return
        started = time.monotonic()
        result = run_command(command, timeout, cwd)
        shown = command if isinstance(command, str) else command[0]
        log("exec", client=self.client_address[0], argv0=shown[:80], exit_code=result["exit_code"],
            timed_out=result["timed_out"], ms=int((time.monotonic() - started) * 1000))
        self._json(200, result)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.agent.token.encode())


def parse_exec(req: Any) -> tuple[Any, float, str | None]:
    if not isinstance(req, dict):
        raise ValueError("expected a JSON object")
    command = req.get("command")
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("command is empty")
    elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        pass
    else:
        raise ValueError("command must be a non-empty list of strings or a shell string")
    timeout = req.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    cwd = req.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ValueError("cwd must be a string")
    return command, min(float(timeout), MAX_TIMEOUT), cwd


# -- the daemon ----------------------------------------------------------------------------------


class Agent:
    """The daemon's object graph: the /exec token, the runner watch, the announcements and the resume
    watch. Every announcement after the first mints a new token: a restored guest must not keep the token
    it had when its slot was saved (every runner cloned from that slot would share it)."""

    def __init__(self, runner_dir: str, announcer: Announcer | None = None, token_file: str = "",
                 notify_deadline: float = NOTIFY_DEADLINE, resume_gap: float = RESUME_GAP,
                 resume_tick: float = RESUME_TICK, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic, renew: Callable[[], None] = renew_dhcp) -> None:
        self.watch = RunnerWatch(runner_dir)
        self.announcer, self.token_file, self.renew = announcer, token_file, renew
        self.notify_deadline = notify_deadline
        self._lock = threading.Lock()
        self.notifier: Notifier | None = None
        self.resume_watch = (ResumeWatch(self._on_resume, resume_gap, resume_tick, wall, mono)
                             if resume_gap > 0 else None)
        self.token = ""
        self._new_token()

    def _new_token(self) -> None:
        token = secrets.token_urlsafe(32)
        if self.token_file:
            write_token(self.token_file, token)
        self.token = token

    def start(self) -> None:
        self._announce(None, rotate=False)  # the token minted at start
        if self.resume_watch is not None:
            self.resume_watch.start()

    def stop(self) -> None:
        if self.resume_watch is not None:
            self.resume_watch.stop()
        with self._lock:
            if self.notifier is not None:
                self.notifier.cancel()

    def reannounce(self, reason: str) -> None:
        """New token, DHCP renew, notify again (after a restore, or on SIGHUP)."""
        log("reannounce", reason=reason)
        self._announce(self.renew, rotate=True)

    def _on_resume(self, frozen: float) -> None:
        self.reannounce(f"stood still {frozen:.1f}s")

    def _announce(self, prepare: Callable[[], None] | None, rotate: bool) -> None:
        with self._lock:
            previous = self.notifier
            if previous is not None:
                previous.cancel()
            if rotate:
                self._new_token()
            if self.announcer is None:
                log("notify.skipped", reason="no --notify-url")
                return

            def first_the_previous_then_prepare() -> None:
                # an attempt of the previous notifier still in flight must not land after ours (old token)
                if previous is not None:
                    previous.join(5.0)
                if prepare is not None:
                    prepare()

            self.notifier = Notifier(self.announcer, self.token, self.notify_deadline, first_the_previous_then_prepare)
            self.notifier.start()


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--listen wants host:port, got {value!r}") from None


def write_token(path: str, token: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shoes-vz-runner-agent", description=(__doc__ or "").split("\n\n")[0],
        epilog="subcommands: `install` and `uninstall` set it up as a LaunchDaemon in a macOS guest "
               "(see `install --help`). SIGHUP makes it re-announce itself (new token, DHCP renew).",
    )
    p.add_argument("--notify-url", default="", type=parse_notify_url,
                   help="the host's IP-notify endpoint, e.g. http://192.168.64.1:8081/notify-ip; "
                        "'auto[:PORT]' = http://<default gateway>:PORT/notify-ip (PORT 8081), resolved at each try; "
                        "empty: no notify")
    p.add_argument("--listen", default="0.0.0.0:8080", type=parse_listen, help="host:port to serve on")
    p.add_argument("--runner-dir", default=os.path.expanduser("~/actions-runner"),
                   help="the GitHub Actions runner directory (holds .runner and _diag/)")
    p.add_argument("--mac", default="", help="this guest's MAC (default: detect; en0 on macOS)")
    p.add_argument("--ip", default="",
                   help="this guest's IP (default: detect); when given, the notify is sent from it")
    p.add_argument("--runner-id", default="", help="sent in the notify (default: the hostname)")
    p.add_argument("--token-file", default="", help="also write the /exec token here (mode 0600)")
    p.add_argument("--resume-gap", type=float, default=RESUME_GAP,
                   help="re-announce when the guest stood still this many seconds (VM restored); 0: never")
    p.add_argument("--notify-deadline", type=float, default=NOTIFY_DEADLINE, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=VERSION)
    return p


def serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    host, port = args.listen
    announcer = Announcer(args.notify_url, args.runner_id or socket.gethostname(), args.ip, args.mac) \
        if args.notify_url else None
    agent = Agent(args.runner_dir, announcer, args.token_file, args.notify_deadline, args.resume_gap)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    try:
        server = Server((host, port), Handler)
    except OSError as e:
        log("listen.failed", address=f"{host}:{port}", error=str(e))
        return 1
    server.agent = agent  # type: ignore[attr-defined]

    def stop(signum: int, _frame: Any) -> None:
        log("stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    def hangup(_signum: int, _frame: Any) -> None:
        threading.Thread(target=agent.reannounce, args=("SIGHUP",), daemon=True).start()

    # handlers first: SIGHUP's default action would kill a daemon that has just announced itself
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangup)
    log("listening", address=f"{host}:{server.server_port}", runner_dir=args.runner_dir, pid=os.getpid())
    agent.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.stop()
        server.server_close()
    log("stopped")
    return 0


# -- install as a LaunchDaemon (run inside a macOS guest while building a template) ------------------

LABEL = "dev.shoes-vz.runner-agent"
PROGRAM = "/usr/local/libexec/shoes-vz-runner-agent"
LAUNCH_DAEMONS = "/Library/LaunchDaemons"
LOG_FILE = "/var/log/shoes-vz-runner-agent.log"
GUEST_RUNNER_DIR = "/tmp/runner"  # myshoes: $RUNNER_BASE_DIRECTORY/runner, RUNNER_BASE_DIRECTORY=/tmp by default
CLT_STUB = "/usr/bin/python3"  # runs the Command Line Tools' python3, or — without them — an install prompt
DAEMON_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
PYTHON_CHECK_TIMEOUT = 30.0
MIN_PYTHON = (3, 9)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

RunCommand = Callable[[list[str]], tuple[int, str]]  # launchctl, injectable in tests


class InstallError(Exception):
    """Bad input or a failed step of install/uninstall; raised before anything is half-written."""


def run_for_install(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    return done.returncode, (done.stdout + done.stderr).strip()


def run_check(argv: list[str]) -> tuple[int, str]:
    """Run `argv` the way launchd would: no terminal input, a deadline (a prompt must not hang us)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PYTHON_CHECK_TIMEOUT, check=False, env={"PATH": ":".join(DAEMON_PATH)})
    except subprocess.TimeoutExpired:
        return 124, f"no answer within {PYTHON_CHECK_TIMEOUT:g}s (waiting for input?)"
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    return done.returncode, (done.stdout + done.stderr).strip()


def python_problem(python: str, run: RunCommand, platform: str, on_disk: str = "") -> str | None:
    """Why `python` (a guest path; at `on_disk` here) cannot run this daemon non-interactively under
    launchd, or None."""
    if platform == "darwin" and python == CLT_STUB:
        code, output = run(["/usr/bin/xcode-select", "-p"])
        if code != 0:
            return (f"{python} is the Xcode Command Line Tools stub and the tools are not installed "
                    f"({output or code}): under launchd it would show an install prompt and exit, and KeepAlive "
                    "would restart it in a loop. Install them (`xcode-select --install`, or `softwareupdate "
                    "--list` then `softwareupdate -i 'Command Line Tools for Xcode-…'`), or pass --python with "
                    "another interpreter (e.g. /opt/homebrew/bin/python3)")
    code, output = run([on_disk or python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    last = output.splitlines()[-1].strip() if output.strip() else ""
    if code != 0:
        return f"{python} does not run non-interactively (exit {code}): {output[-400:] or 'no output'}"
    m = re.fullmatch(r"(\d+)\.(\d+)", last)
    if m is None or (int(m.group(1)), int(m.group(2))) < MIN_PYTHON:
        return f"{python} is Python {last or '?'}; the runner-agent needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or later"
    return None


def daemon_path(python: str) -> str:
    """The daemon's PATH: the interpreter's directory, then the usual tool directories."""
    dirs = [os.path.dirname(python), *DAEMON_PATH]
    return ":".join(dict.fromkeys(d for d in dirs if d))


def program_bytes(source: str, python: str) -> bytes:
    """This module as the one executable file a guest needs, with its shebang (replacing an old one)."""
    if source.startswith("#!"):
        source = source.partition("\n")[2]
    return f"#!{python}\n{source}".encode()


def daemon_plist(label: str, daemon_args: list[str], path: str) -> bytes:
    data = {
        "Label": label,
        "ProgramArguments": [PROGRAM, *daemon_args],
        # launchd's own PATH is /usr/bin:/bin:/usr/sbin:/sbin; ipconfig, ps, route and /exec commands
        # should find what an admin finds
        "EnvironmentVariables": {"PATH": path},
        # No UserName, so launchd runs it as root. /status alone would work as `runner` (it reads the
        # runner dir and `ps`), but re-announcing after a restore needs `ipconfig set en0 DHCP` (root
        # only), and /exec is the host's way into its own disposable VM (shutdown, collecting logs), so
        # it must not be limited to what the job's user may do. The per-boot bearer token guards /exec;
        # it lives only in this root process's memory, out of reach of the job running as `runner`.
        "RunAtLoad": True,
        "KeepAlive": True,
        "StandardOutPath": LOG_FILE,
        "StandardErrorPath": LOG_FILE,
    }
    return plistlib.dumps(data, fmt=plistlib.FMT_XML, sort_keys=True)


def load_commands(label: str, plist: str) -> list[list[str]]:
    """launchctl argv, in order: drop an old instance (may be absent), clear a `launchctl disable`
    (else bootstrap fails with 119 "Service is disabled"), then load the plist."""
    return [
        ["launchctl", "bootout", f"system/{label}"],
        ["launchctl", "enable", f"system/{label}"],
        ["launchctl", "bootstrap", "system", plist],
    ]


def _not_loaded(code: int, output: str) -> bool:
    # 3 = ESRCH "No such process", 113 = "Could not find specified service"
    return code in (3, 113) or bool(re.search(r"no such process|could not find", output, re.IGNORECASE))


def _bootout(run: RunCommand, label: str) -> None:
    argv = ["launchctl", "bootout", f"system/{label}"]
    code, output = run(argv)
    if code != 0 and not _not_loaded(code, output):
        raise InstallError(f"`{' '.join(argv)}` failed ({code}): {output}")
    print(f"ran {' '.join(argv)}" + (" (it was not loaded)" if code else ""))


def _load(run: RunCommand, label: str, plist: str, sleep: Callable[[float], None]) -> None:
    _bootout(run, label)
    for argv in load_commands(label, plist)[1:]:
        for attempt in range(1, 4):
            code, output = run(argv)
            # 5 = EIO: the old instance is still going away after bootout; launchd needs a moment
            if code == 5 and argv[1] == "bootstrap" and attempt < 3:
                sleep(1.0)
                continue
            break
        if code != 0:
            raise InstallError(f"`{' '.join(argv)}` failed ({code}): {output}")
        print(f"ran {' '.join(argv)}")


class Layout:
    """Where install puts things: guest paths, and the same paths under --root on this machine."""

    def __init__(self, root: str, label: str, system_root: str = "/") -> None:
        if not os.path.isdir(root):
            raise InstallError(f"--root {root}: no such directory")
        if not _LABEL.match(label):
            raise InstallError(f"--label {label!r}: use letters, digits, '.', '_' and '-' (e.g. {LABEL})")
        self.root, self.label = os.path.abspath(root), label
        self.live = self.root == os.path.abspath(system_root)  # the running system, not a prepared tree
        self.plist = f"{LAUNCH_DAEMONS}/{label}.plist"

    def on_disk(self, guest_path: str) -> str:
        return os.path.join(self.root, guest_path.lstrip("/"))

    def check_privileges(self, euid: int, dry_run: bool) -> None:
        if euid != 0 and self.live and not dry_run:
            raise InstallError("must run as root to write /Library/LaunchDaemons: use sudo "
                               "(or --root DIR to prepare another tree, or --dry-run to look)")

    def check_live_system(self, flag: str, platform: str, dry_run: bool) -> None:
        if not self.live:
            raise InstallError(f"{flag} acts on the running system; it cannot be combined with --root")
        if platform != "darwin" and not dry_run:
            raise InstallError(f"{flag} needs launchctl: run it inside the macOS guest")


def _same(path: str, data: bytes, mode: int) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data and os.stat(path).st_mode & 0o7777 == mode
    except OSError:
        return False


def _stage(path: str, data: bytes, mode: int, as_root: bool) -> str:
    """Write a temp file next to `path` (same directory, so the final rename is atomic)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if as_root:
                os.fchown(f.fileno(), 0, 0)  # root:wheel: launchd ignores plists others could change
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _interpreter(args: argparse.Namespace, layout: Layout, check: RunCommand, platform: str) -> str:
    """The shebang's interpreter: an absolute guest path, run once now when this is the live system."""
    python = args.python
    if python is None:
        if not layout.live:
            raise InstallError("--python: with --root, give the guest's interpreter as an absolute guest path "
                               "(e.g. /opt/homebrew/bin/python3); it cannot be run from here to check it")
        python = os.path.abspath(sys.executable)  # the one running install (symlinks kept: they survive upgrades)
    if not (os.path.isabs(python) and os.access(layout.on_disk(python), os.X_OK)
            and os.path.isfile(layout.on_disk(python))):
        raise InstallError(f"--python {python}: not an executable file in the guest (give an absolute path)")
    if re.search(r"\s", python):
        raise InstallError(f"--python {python!r}: a shebang cannot hold whitespace; use a path without it")
    if layout.live:
        problem = python_problem(python, check, platform, layout.on_disk(python))
        if problem is not None:
            raise InstallError(problem)
        print(f"checked {python}: it runs non-interactively")
    return python


def install(args: argparse.Namespace, run: RunCommand, euid: int, platform: str,
            sleep: Callable[[float], None] = time.sleep, system_root: str = "/",
            check: RunCommand = run_check) -> None:
    layout = Layout(args.root, args.label, system_root)
    layout.check_privileges(euid, args.dry_run)
    if args.load:
        layout.check_live_system("--load", platform, args.dry_run)
    python = _interpreter(args, layout, check, platform)
    runner_dir = os.path.normpath(args.runner_dir)
    if not os.path.isabs(runner_dir):
        raise InstallError(f"--runner-dir {args.runner_dir}: give an absolute guest path")
    home = os.path.dirname(runner_dir)
    if not os.path.isdir(layout.on_disk(home)):
        raise InstallError(f"--runner-dir {runner_dir}: {layout.on_disk(home)} does not exist in the guest; pass "
                           "the directory myshoes' setup_script uses ($RUNNER_BASE_DIRECTORY/runner)")
    try:
        with open(__file__, encoding="utf-8") as f:
            program = program_bytes(f.read(), python)
    except (OSError, UnicodeDecodeError) as e:
        raise InstallError(f"cannot read my own source {__file__}: {e}") from None
    daemon_args = ["--notify-url", args.notify_url, "--listen", args.listen, "--runner-dir", runner_dir]
    files = [(PROGRAM, program, 0o755),
             (layout.plist, daemon_plist(layout.label, daemon_args, daemon_path(python)), 0o644)]

    if args.dry_run:
        for guest_path, data, mode in files:
            print(f"would write {layout.on_disk(guest_path)} (mode {mode:04o}, owner root:wheel, {len(data)} bytes)")
        print(files[1][1].decode(), end="")
        if args.load:
            for argv in load_commands(layout.label, layout.plist):
                print(f"would run {' '.join(argv)}")
        return

    # stage every file first: a failure leaves the previous install (or nothing) in place
    staged: list[tuple[str, str]] = []
    try:
        for guest_path, data, mode in files:
            path = layout.on_disk(guest_path)
            if _same(path, data, mode):
                print(f"unchanged {path}")
            else:
                staged.append((_stage(path, data, mode, euid == 0), path))
    except OSError as e:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise InstallError(f"could not write {e.filename or ''}: {e.strerror or e}") from None
    for tmp, path in staged:
        os.replace(tmp, path)
        print(f"wrote {path}")
    if euid != 0:
        print("note: not root, so the files are not owned by root:wheel; launchd refuses such a plist")
    if args.load:
        try:
            _load(run, layout.label, layout.plist, sleep)
        except InstallError as e:
            raise InstallError(f"the files are installed, but loading failed: {e}") from None
        print(f"loaded {layout.label}; its log is {LOG_FILE}")
    elif layout.live:
        print("not loaded yet: it starts at the next boot, or now with --load")


def uninstall(args: argparse.Namespace, run: RunCommand, euid: int, platform: str,
              system_root: str = "/") -> None:
    layout = Layout(args.root, args.label, system_root)
    layout.check_privileges(euid, args.dry_run)
    if args.unload:
        layout.check_live_system("--unload", platform, args.dry_run)
    paths = [layout.on_disk(layout.plist), layout.on_disk(PROGRAM)]  # the plist first: no reload at boot
    if args.dry_run:
        if args.unload:
            print(f"would run launchctl bootout system/{layout.label}")
        for path in paths:
            print(f"would remove {path}" if os.path.lexists(path) else f"absent {path}")
        return
    if args.unload:
        _bootout(run, layout.label)
    for path in paths:
        try:
            os.unlink(path)
            print(f"removed {path}")
        except FileNotFoundError:
            print(f"absent {path}")
        except OSError as e:
            raise InstallError(f"could not remove {path}: {e.strerror or e}") from None


def _listen_text(value: str) -> str:
    parse_listen(value)
    return value


def install_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"shoes-vz-runner-agent {command}", description=(
        "Install this file as a LaunchDaemon in a macOS guest: the program at " + PROGRAM
        + f" and {LAUNCH_DAEMONS}/LABEL.plist." if command == "install" else
        "Remove what `install` wrote."))
    p.add_argument("--root", default="/", help="prefix for every path (a mounted disk image, tests); default /")
    p.add_argument("--label", default=LABEL, help=f"launchd label and plist name (default {LABEL})")
    p.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    if command == "install":
        p.add_argument("--python", default=None,
                       help="interpreter for the program's shebang (absolute guest path), checked to run "
                            "non-interactively; default: the one running install (required with --root)")
        p.add_argument("--notify-url", default=AUTO, type=parse_notify_url,
                       help="the daemon's --notify-url (default auto: http://<default gateway>:8081/notify-ip)")
        p.add_argument("--listen", default="0.0.0.0:8080", type=_listen_text, help="the daemon's --listen")
        p.add_argument("--runner-dir", default=GUEST_RUNNER_DIR,
                       help=f"the actions runner directory in the guest (default {GUEST_RUNNER_DIR})")
        p.add_argument("--load", action="store_true", help="load it now: launchctl bootout, enable, bootstrap")
    else:
        p.add_argument("--unload", action="store_true", help="stop it now: launchctl bootout")
    return p


def install_main(argv: list[str], run: RunCommand = run_for_install, euid: int | None = None,
                 platform: str = sys.platform, sleep: Callable[[float], None] = time.sleep,
                 system_root: str = "/", check: RunCommand = run_check) -> int:
    """`install ...` / `uninstall ...`. Tests inject `run` (launchctl), `euid`, `platform`, `check`
    (how the interpreter is tried) and `system_root` (the tree that counts as the running system, so
    --load never touches this machine)."""
    command = argv[0]
    args = install_parser(command).parse_args(argv[1:])
    uid = os.geteuid() if euid is None else euid
    try:
        if command == "install":
            install(args, run, uid, platform, sleep, system_root, check)
        else:
            uninstall(args, run, uid, platform, system_root)
    except InstallError as e:
        sys.stderr.write(f"shoes-vz-runner-agent {command}: error: {e}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("install", "uninstall"):
        return install_main(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
