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
"""

# Annotations stay strings (PEP 563), so `str | None` and `dict[...]` below are fine on Python 3.9;
# runtime expressions must not use 3.10+ syntax or APIs.
from __future__ import annotations

import argparse
import glob
import hmac
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
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


class Notifier(threading.Thread):
    """POSTs the notify body at once, then with 50 ms doubling backoff (capped) until accepted."""

    def __init__(self, url: str, body: dict[str, str], source_ip: str | None, deadline: float) -> None:
        super().__init__(name="notify", daemon=True)
        self.url, self.body, self.source_ip, self.deadline = url, body, source_ip, deadline
        self.done = threading.Event()
        self.ok = False

    def _attempt(self) -> tuple[int, str]:
        u = urllib.parse.urlsplit(self.url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"notify URL must be http://host[:port]/path, got {self.url!r}")
        conn = http.client.HTTPConnection(
            u.hostname, u.port or 80, timeout=2.0,
            source_address=(self.source_ip, 0) if self.source_ip else None,
        )
        try:
            payload = json.dumps(self.body).encode()
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
            while True:
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
                except (OSError, http.client.HTTPException) as e:
                    log("notify.error", attempt=attempt, error=f"{type(e).__name__}: {e}")
                if time.monotonic() - started + delay > self.deadline:
                    log("notify.giveup", attempts=attempt, after_s=round(time.monotonic() - started, 1))
                    return
                time.sleep(delay)
                delay = min(delay * 2, NOTIFY_MAX_DELAY)
        finally:
            self.done.set()


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


# -- main ----------------------------------------------------------------------------------------


class Agent:
    def __init__(self, token: str, runner_dir: str) -> None:
        self.token = token
        self.watch = RunnerWatch(runner_dir)


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
    p = argparse.ArgumentParser(prog="shoes-vz-runner-agent", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--notify-url", default="",
                   help="the host's IP-notify endpoint, e.g. http://192.168.64.1:8081/notify-ip")
    p.add_argument("--listen", default="0.0.0.0:8080", type=parse_listen, help="host:port to serve on")
    p.add_argument("--runner-dir", default=os.path.expanduser("~/actions-runner"),
                   help="the GitHub Actions runner directory (holds .runner and _diag/)")
    p.add_argument("--mac", default="", help="this guest's MAC (default: detect; en0 on macOS)")
    p.add_argument("--ip", default="",
                   help="this guest's IP (default: detect); when given, the notify is sent from it")
    p.add_argument("--runner-id", default="", help="sent in the notify (default: the hostname)")
    p.add_argument("--token-file", default="", help="also write the /exec token here (mode 0600)")
    p.add_argument("--notify-deadline", type=float, default=NOTIFY_DEADLINE, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host, port = args.listen
    token = secrets.token_urlsafe(32)
    if args.token_file:
        write_token(args.token_file, token)
    agent = Agent(token, args.runner_dir)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    try:
        server = Server((host, port), Handler)
    except OSError as e:
        log("listen.failed", address=f"{host}:{port}", error=str(e))
        return 1
    server.agent = agent  # type: ignore[attr-defined]
    log("listening", address=f"{host}:{server.server_port}", runner_dir=args.runner_dir, pid=os.getpid())

    if args.notify_url:
        notify_host = urllib.parse.urlsplit(args.notify_url).hostname or ""
        ip = args.ip or detect_ip(notify_host)
        mac = args.mac or detect_mac(ip)
        body = {"runner_id": args.runner_id or socket.gethostname(), "ip_address": ip,
                "mac_address": mac, "token": token}
        Notifier(args.notify_url, body, args.ip or None, args.notify_deadline).start()
    else:
        log("notify.skipped", reason="no --notify-url")

    def stop(signum: int, _frame: Any) -> None:
        log("stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
