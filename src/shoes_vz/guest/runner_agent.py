"""shoes-vz runner-agent: the small daemon inside each guest (DESIGN §3.4, docs/security.md §8–§10).

STDLIB ONLY, one module, Python >= 3.9: it is copied into guest images that have nothing else.
Do not import shoes_vz (or anything outside the standard library) here; a test enforces it.

**The runner channel** (`--channel`): a stream only the host can open, bound to this VM — virtio-vsock
port 8079 on a Mac (`vsock:PORT`; CPython has no AF_VSOCK on macOS, so the socket is made through
libc), a per-VM Unix socket in the sim (`unix:PATH`). The host says hello with one JSON line
`{"shoes_vz": "hello", "runner_id", "nonce", "user_ca", "time", "reannounce"}`; we step our clock to
its time, and on the first hello of a boot — and on a re-announce after a restore — trust its SSH
user CA for this runner alone (sshd's `TrustedUserCAKeys` and `AuthorizedPrincipalsFile` in
--state-dir), mint a fresh SSH host key (and, after the first, a fresh /exec token), then answer
`{"shoes_vz": "welcome", "runner_id", "nonce", "addresses", "token", "host_key", "clock", ...}`.
The agent takes this runner's address, token and host key from that answer, never from the network.

At start it also POSTs `{"runner_id", "ip_address", "mac_address"}` to the host's notify URL at
once, retrying with short backoff: a hint that makes the host say hello early (it carries no
secret). Meanwhile it serves:

    GET  /health  -> 200 {"status": "ok"}
    GET  /status  -> {"runner_id", "runner_name", "state": OFFLINE|PREPARING|IDLE|RUNNING|FINISHED}
    POST /exec    -> bearer token; {"command": [argv...] | "sh string", "timeout": s, "cwd": dir}
                     -> {"exit_code", "stdout", "stderr", "truncated", "timed_out"}

Every request is bounded: the bearer token is checked before a body is read, a request must arrive
within REQUEST_TIMEOUT, at most MAX_CONNECTIONS are served at once (more are closed), and a command's
timeout kills its whole process group and answers at once.

The runner state comes from the GitHub Actions runner's files and processes: `.runner` (written by
config.sh), the `Runner.Listener` / `Runner.Worker` processes that belong to --runner-dir, and the
newest `_diag/Runner_*.log`.

After the VM is restored from a saved state (a warm slot, DESIGN §12) the host's hello says so
(`reannounce`): new token and host key, DHCP renew (macOS, root), notify again. The clocks
(ResumeWatch) and SIGHUP still trigger a DHCP renew and a notify.

`install` / `uninstall` (run inside a macOS guest as root) put this file at
/usr/local/libexec/shoes-vz-runner-agent, a LaunchDaemon plist in /Library/LaunchDaemons and
sshd's drop-in in /etc/ssh/sshd_config.d. The program's shebang is the absolute path of an
interpreter checked to run non-interactively (never `/usr/bin/env python3`: launchd's PATH finds
`/usr/bin/python3`, the Xcode Command Line Tools stub, which without the tools shows an install
prompt and exits, and KeepAlive respawns it in a loop); the plist sets PATH for everything the
daemon runs.
"""

# Annotations stay strings (PEP 563), so `str | None` and `dict[...]` below are fine on Python 3.9;
# runtime expressions must not use 3.10+ syntax or APIs.
from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import hmac
import http.client
import json
import math
import os
import plistlib
import re
import secrets
import select
import selectors
import shutil
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

VERSION = "0.2.0"

OFFLINE, PREPARING, IDLE, RUNNING, FINISHED = "OFFLINE", "PREPARING", "IDLE", "RUNNING", "FINISHED"

OUTPUT_LIMIT = 64 * 1024  # per stream, for /exec
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
MAX_BODY = 1024 * 1024
EXIT_DRAIN = 0.2          # seconds of output still taken after a command ended (or was killed)
REQUEST_TIMEOUT = 10.0    # seconds to receive a request: its line, headers and body
MAX_CONNECTIONS = 32      # served at once; more are closed at once (each holds a thread)
LOG_TAIL_BYTES = 256 * 1024
NOTIFY_FIRST_DELAY, NOTIFY_MAX_DELAY, NOTIFY_DEADLINE = 0.05, 1.0, 120.0

LISTENER, WORKER = "Runner.Listener", "Runner.Worker"
_LOG_PATTERNS = (  # checked per line, newest line first: the last relevant line decides
    (re.compile(r"Job .* completed with result"), FINISHED),
    (re.compile(r"Running job"), RUNNING),
    (re.compile(r"Listening for Jobs"), IDLE),
)


# -- the guest's clock -----------------------------------------------------------------------------

CLOCK_STEP_MIN = 1.0  # seconds: a smaller difference from the host's time is left to timed/NTP
CLOCK_MODES = ("auto", "system", "model")


def timeval_type(platform: str) -> Any:
    """`struct timeval` of `platform`: time_t is a long on both; suseconds_t is an int32 on macOS
    (`__darwin_suseconds_t`) and a long on Linux."""
    usec = ctypes.c_int32 if platform == "darwin" else ctypes.c_long

    class Timeval(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", usec)]

    return Timeval


def set_system_time(t: float, platform: str = sys.platform) -> str | None:
    """settimeofday(2) to `t` (root only); None, or why it failed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tv = timeval_type(platform)(int(t), int(round((t - int(t)) * 1e6)) % 1000000)
        if libc.settimeofday(ctypes.byref(tv), None) != 0:
            return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError, ValueError) as e:
        return str(e)
    return None


class Clock:
    """The guest's wall clock, stepped to the host's time when the host says hello: a restored VZ
    guest's clock stood still while it was saved and does not catch up by itself (UTM#6017), and a
    stale clock breaks GitHub's token checks.

    `system` steps the real clock (settimeofday; root on macOS). `model` is the sim's: a namespaced
    sim guest cannot set its host's clock, so it records the offset it would have applied and uses it
    for its own timestamps (log lines, the channel's answer). `auto`: system as root on macOS, else
    model."""

    def __init__(self, mode: str = "model", offset: float = 0.0) -> None:
        self.mode, self.offset = mode, offset
        self.lock = threading.Lock()

    def configure(self, mode: str, offset: float = 0.0) -> None:
        if mode == "auto":
            mode = "system" if sys.platform == "darwin" and os.geteuid() == 0 else "model"
        self.mode, self.offset = mode, offset

    def now(self) -> float:
        return time.time() + self.offset

    def step_to(self, host_time: float) -> dict[str, Any]:
        """Step to `host_time` unless within CLOCK_STEP_MIN; what was done (before/after/stepped/how)."""
        with self.lock:
            before = self.now()
            how = "none"
            if abs(host_time - before) >= CLOCK_STEP_MIN:
                if self.mode == "system":
                    error = set_system_time(host_time)
                    how = "settimeofday" if error is None else f"settimeofday failed: {error}"
                else:
                    self.offset += host_time - before
                    how = "model (offset recorded; the sim cannot set its host's clock)"
            after = self.now()
        return {"before": round(before, 3), "after": round(after, 3), "stepped": round(after - before, 3),
                "how": how, "mode": self.mode}


CLOCK = Clock()  # configured by serve(); log lines carry the guest's (possibly stepped) time


def log(event: str, **fields: Any) -> None:
    """One line per event on stderr: `<utc time> runner-agent <event> k=v ...`."""
    parts = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(CLOCK.now())), "runner-agent", event]
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


def addresses_from_ip_addr(text: str) -> list[tuple[str, str]]:
    """(interface, IPv4) pairs from `ip -o -4 addr show` (Linux), loopback left out."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[1].rstrip(":") != "lo":
            found.append((fields[1].rstrip(":"), fields[3].split("/")[0]))
    return found


def addresses_from_ifconfig(text: str) -> list[tuple[str, str, str]]:
    """(interface, IPv4, MAC) triples from `ifconfig -a` (macOS), loopback left out."""
    found, iface, mac, inets = [], "", "", []  # type: ignore[var-annotated]

    def flush() -> None:
        if iface and not iface.startswith("lo"):
            found.extend((iface, ip, mac) for ip in inets)

    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.]+): flags=", line)
        if m:
            flush()
            iface, mac, inets = m.group(1), "", []
            continue
        words = line.split()
        if len(words) >= 2 and words[0] == "ether":
            mac = words[1].lower()
        elif len(words) >= 2 and words[0] == "inet":
            inets.append(words[1])
    flush()
    return found


def detect_addresses(ip: str = "", mac: str = "") -> list[dict[str, str]]:
    """This guest's IPv4 addresses with their interfaces' MACs, for the channel's answer. Given
    `ip` (the loopback sim, whose "interface" is the host's lo) that one alone."""
    if ip:
        return [{"ip": ip, "mac": mac or detect_mac(ip), "interface": ""}]
    if sys.platform == "darwin":
        return [{"ip": a, "mac": m, "interface": i} for i, a, m in addresses_from_ifconfig(_run(["ifconfig", "-a"]))]
    out = []
    for iface, address in addresses_from_ip_addr(_run(["ip", "-o", "-4", "addr", "show"])):
        try:
            with open(f"/sys/class/net/{iface}/address") as f:
                found = f.read().strip().lower()
        except OSError:
            found = ""
        out.append({"ip": address, "mac": found, "interface": iface})
    return out

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

    def body(self, url: str) -> dict[str, str]:
        """What a notify says: no secret (the token travels over the channel), only a hint."""
        ip = self.ip or detect_ip(urllib.parse.urlsplit(url).hostname or "")
        if not ip:
            raise NotReady("no IPv4 address yet")
        mac = self.mac or detect_mac(ip)
        return {"runner_id": self.runner_id, "ip_address": ip, "mac_address": mac}

    @property
    def source_ip(self) -> str | None:
        return self.ip or None  # when given, the notify leaves from it (the host matches by source address)


class Notifier(threading.Thread):
    """POSTs the notify at once, then with 50 ms doubling backoff (capped) until accepted, the deadline
    passes or it is cancelled (a newer announcement replaces it)."""

    def __init__(self, announcer: Announcer, deadline: float, prepare: Callable[[], None] | None = None) -> None:
        super().__init__(name="notify", daemon=True)
        self.announcer, self.deadline, self.prepare = announcer, deadline, prepare
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self.ok = False

    def cancel(self) -> None:
        self.cancelled.set()

    def _attempt(self) -> tuple[int, str]:
        url = self.announcer.url()
        body = self.announcer.body(url)
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

    def rebase(self) -> None:
        """Start counting afresh (the clock was just stepped on purpose)."""
        self._last = (self.wall(), self.mono())

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


class _Output:
    """The first OUTPUT_LIMIT bytes of a stream; the rest is read and dropped (the child never blocks)."""

    def __init__(self) -> None:
        self.data, self.truncated = bytearray(), False

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_LIMIT - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


def run_command(command: Any, timeout: float, cwd: str | None = None) -> dict[str, Any]:
    """Run `command` in a session of its own; answer when it ends, or at its timeout after killing its
    whole process group. Background children that keep its pipes open (`sleep 12 &`) never hold the
    answer: once the command ended, output is taken for EXIT_DRAIN seconds more, then we answer."""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        # own session = own process group, so a timeout kills the command and all its children
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
    except (OSError, ValueError) as e:
        return {"exit_code": 127, "stdout": "", "stderr": f"{argv[0]}: {getattr(e, 'strerror', None) or e}\n",
                "truncated": False, "timed_out": False}
    assert proc.stdout is not None and proc.stderr is not None
    outputs = {proc.stdout.fileno(): _Output(), proc.stderr.fileno(): _Output()}
    deadline = time.monotonic() + timeout
    timed_out, ended = False, None  # ended: when the command exited (or was killed)
    with selectors.DefaultSelector() as sel:
        for fd in outputs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if ended is None and proc.poll() is not None:
                ended = now
            elif ended is None and now >= deadline:
                timed_out = _kill_group(proc)
                ended = now
            if ended is not None and (now - ended >= EXIT_DRAIN or not sel.get_map()):
                break
            if not sel.get_map():  # both pipes closed, the command still runs: wait for it alone
                try:
                    proc.wait(max(0.0, deadline - now))
                except subprocess.TimeoutExpired:
                    timed_out = _kill_group(proc)
                ended = time.monotonic()
                break
            wait = EXIT_DRAIN - (now - ended) if ended is not None else min(0.05, deadline - now)
            for key, _ in sel.select(max(0.0, wait)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    outputs[key.fd].add(chunk)
                else:
                    sel.unregister(key.fd)
    out, err = outputs[proc.stdout.fileno()], outputs[proc.stderr.fileno()]
    for pipe in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            pipe.close()  # nobody else reads it: closing never waits for a child that holds it
    return {"exit_code": proc.returncode, "stdout": out.text(), "stderr": err.text(),
            "truncated": out.truncated or err.truncated, "timed_out": timed_out}


def _kill_group(proc: subprocess.Popen[bytes]) -> bool:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def parse_exec(req: Any) -> tuple[Any, float, str | None]:
    if not isinstance(req, dict):
        raise ValueError("expected a JSON object")
    command = req.get("command")
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("command is empty")
        parts = [command]
    elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        parts = command
    else:
        raise ValueError("command must be a non-empty list of strings or a shell string")
    if any("\x00" in a for a in parts):
        raise ValueError("command contains a NUL character")
    timeout = req.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError("timeout must be a positive, finite number of seconds")
    cwd = req.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or "\x00" in cwd):
        raise ValueError("cwd must be a string without NUL characters")
    return command, min(float(timeout), MAX_TIMEOUT), cwd


# -- HTTP ----------------------------------------------------------------------------------------


class Watchdog(threading.Thread):
    """One thread for the whole server: a connection that has not delivered its request by its
    deadline is shut down, so a slow sender (one byte now and then) cannot hold a thread for long."""

    def __init__(self) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        self.stopped = threading.Event()

    def arm(self, conn: socket.socket, seconds: float) -> None:
        with self._lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def disarm(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def run(self) -> None:
        while not self.stopped.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [c for c, d in self._deadlines.items() if d <= now]
                for c in late:
                    del self._deadlines[c]
            for c in late:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)


class Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them; a connection beyond that is closed at
    once (never queued behind idle ones)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.watchdog = Watchdog()
        super().__init__(address, Handler)
        self.watchdog.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log("http.busy", client=client_address[0] if client_address else "")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_close(self) -> None:
        self.watchdog.stopped.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer is one event line; anything else is a bug: its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log("http.client_gone", client=client_address[0] if client_address else "", error=type(error).__name__)
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server_version = f"shoes-vz-runner-agent/{VERSION}"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT  # per read: an idle keep-alive connection goes after this long

    @property
    def agent(self) -> Agent:
        return self.server.agent  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # requests are logged as events below, not in the http.server format

    def handle_one_request(self) -> None:
        watchdog: Watchdog = self.server.watchdog  # type: ignore[attr-defined]
        watchdog.arm(self.connection, REQUEST_TIMEOUT)  # the request line, headers and body
        try:
            super().handle_one_request()
        finally:
            watchdog.disarm(self.connection)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # no status line or headers in an answer: refuse it plainly
            self.request_version = "HTTP/1.0"
            self.close_connection = True
            self.send_error(400, "HTTP/1.x only")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's refusals of a request it could not parse, as the client's fault (4xx): an unknown
        method is 405 (not 501), an HTTP version other than 1.x is 400 (not 505)."""
        if code in (501, 505):
            code, message = (405, f"method {self.command!r} not allowed") if code == 501 else (400, "HTTP/1.x only")
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        super().send_error(code, message, explain)

    def _received(self) -> None:
        """The whole request is in: what follows (an /exec) may take its own time."""
        self.server.watchdog.disarm(self.connection)  # type: ignore[attr-defined]

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._received()
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, {"status": "ok", "version": VERSION})
        elif path == "/status":
            self._json(200, self.agent.watch.status())
        else:
            self._json(404, {"error": f"no such endpoint {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        # decided on the headers alone: a body we will not use is never read (nor waited for)
        if path != "/exec":
            self.close_connection = True
            self._json(404, {"error": f"no such endpoint {path}"})
            return
        if not self._authorized():
            log("exec.denied", client=self.client_address[0])
            self.close_connection = True
            self._json(403, {"error": "missing or wrong bearer token"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._json(413 if length > MAX_BODY else 400, {"error": "bad Content-Length"})
            return
        try:
            raw = self.rfile.read(length) if length else b""
        except OSError:
            self.close_connection = True
            return
        if len(raw) < length:  # the sender gave up, or was too slow (the watchdog)
            self.close_connection = True
            return
        self._received()
        try:
            req = json.loads(raw.decode("utf-8"))
            command, timeout, cwd = parse_exec(req)
        except (ValueError, RecursionError) as e:  # bad UTF-8/JSON (too deep a nesting too), bad fields
            self._json(400, {"error": str(e)[:500]})
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


# -- the runner channel: a stream only the host can open, bound to this VM -----------------------

CHANNEL_PORT = 8079              # the vsock port the host connects to (the agent's vm/channel.py agrees)
CHANNEL_VERSION = 1
MAX_CHANNEL_LINE = 16 * 1024     # one JSON line each way
CHANNEL_IO_TIMEOUT = 5.0
AF_VSOCK = 40                    # <sys/vsock.h> (macOS) and <linux/vm_sockets.h> agree
VMADDR_CID_ANY = 0xFFFFFFFF
_RUNNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NONCE = re.compile(r"^[0-9a-f]{16,128}$")
_PUBLIC_KEY = re.compile(r"^(ssh|ecdsa)-[a-z0-9@.-]+ [A-Za-z0-9+/=]{16,8192}( [ -~]{0,200})?$")


class SockaddrVmDarwin(ctypes.Structure):
    """`struct sockaddr_vm` of macOS <sys/vsock.h>: packed, 12 bytes, a BSD length byte first."""

    _pack_ = 1
    _fields_ = [("svm_len", ctypes.c_uint8), ("svm_family", ctypes.c_uint8), ("svm_reserved1", ctypes.c_uint16),
                ("svm_port", ctypes.c_uint32), ("svm_cid", ctypes.c_uint32)]


class SockaddrVmLinux(ctypes.Structure):
    """`struct sockaddr_vm` of <linux/vm_sockets.h>: 16 bytes, the size of `struct sockaddr`."""

    _fields_ = [("svm_family", ctypes.c_uint16), ("svm_reserved1", ctypes.c_uint16), ("svm_port", ctypes.c_uint32),
                ("svm_cid", ctypes.c_uint32), ("svm_flags", ctypes.c_uint8), ("svm_zero", ctypes.c_uint8 * 3)]


def sockaddr_vm(port: int, cid: int = VMADDR_CID_ANY, platform: str = sys.platform) -> Any:
    if platform == "darwin":
        return SockaddrVmDarwin(ctypes.sizeof(SockaddrVmDarwin), AF_VSOCK, 0, port, cid)
    if platform.startswith("linux"):
        return SockaddrVmLinux(AF_VSOCK, 0, port, cid, 0)
    raise OSError(f"vsock: no sockaddr_vm layout known for {platform}")


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


class VsockListener:
    """A listening AF_VSOCK stream socket made through libc: CPython's socket module has no AF_VSOCK
    on macOS, and its accept() refuses a family it has no address size for. Accepted connections are
    wrapped as socket objects (recv, sendall and timeouts need no address)."""

    def __init__(self, port: int, platform: str = sys.platform, backlog: int = 8) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        fd = self.libc.socket(AF_VSOCK, socket.SOCK_STREAM, 0)
        if fd < 0:
            raise _errno_error("socket(AF_VSOCK)")
        try:
            addr = sockaddr_vm(port, VMADDR_CID_ANY, platform)
            if self.libc.bind(fd, ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
                raise _errno_error(f"bind(vsock port {port})")
            if self.libc.listen(fd, backlog) != 0:
                raise _errno_error("listen(vsock)")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def accept(self) -> socket.socket:
        conn = self.libc.accept(self.fd, None, None)
        if conn < 0:
            raise _errno_error("accept(vsock)")
        return socket.socket(AF_VSOCK, socket.SOCK_STREAM, 0, fileno=conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class UnixListener:
    """The sim's vsock: a Unix socket in a directory only this VM's guest (and the host) can reach."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(_short_unix_path(path))
            os.chmod(path, 0o600)
            self.sock.listen(8)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> socket.socket:
        return self.sock.accept()[0]

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _short_unix_path(path: str) -> str:
    """`path`, or on Linux the same place through /proc/self/fd when it is too long for sun_path."""
    if len(os.fsencode(path)) <= 100 or not os.path.isdir("/proc/self/fd"):
        return path
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)  # kept open: the socket's name goes through it
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}"


def parse_channel(value: str) -> tuple[str, str]:
    """`vsock:PORT` or `unix:PATH`; "" for none."""
    if value == "":
        return "", ""
    kind, _, rest = value.partition(":")
    if kind == "vsock" and rest.isdigit() and 0 < int(rest) < 2**32 - 1:
        return kind, rest
    if kind == "unix" and rest.startswith("/"):
        return kind, rest
    raise argparse.ArgumentTypeError(f"--channel wants vsock:PORT or unix:/absolute/path, got {value!r}")


def channel_listener(kind: str, where: str) -> Any:
    if kind == "vsock":
        return VsockListener(int(where))
    return UnixListener(where)


def read_line(conn: socket.socket, limit: int = MAX_CHANNEL_LINE) -> bytes:
    """One line (without its newline); OSError when it is longer than `limit` or the peer hangs up."""
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("the host hung up before the end of its line")
        data += chunk
        if len(data) > limit:
            raise OSError(f"a channel line longer than {limit} bytes")
    return data.split(b"\n", 1)[0]


class HelloError(ValueError):
    """A hello we will not act on (answered with an error, changes nothing)."""


def parse_hello(obj: Any) -> dict[str, Any]:
    """The host's hello, every field checked before anything is done with it."""
    if not isinstance(obj, dict) or obj.get("shoes_vz") != "hello":
        raise HelloError("expected {\"shoes_vz\": \"hello\", ...}")
    runner_id, nonce, ca, at = obj.get("runner_id"), obj.get("nonce"), obj.get("user_ca"), obj.get("time")
    if not isinstance(runner_id, str) or not _RUNNER_ID.match(runner_id):
        raise HelloError("runner_id: letters, digits, '.', '_' and '-', at most 128")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise HelloError("nonce: 16 to 128 lowercase hex digits")
    if not isinstance(ca, str) or not _PUBLIC_KEY.match(ca):
        raise HelloError("user_ca: one OpenSSH public key line")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at <= 0:
        raise HelloError("time: seconds since the epoch")
    reannounce = obj.get("reannounce", False)
    if not isinstance(reannounce, bool):
        raise HelloError("reannounce: true or false")
    return {"runner_id": runner_id, "nonce": nonce, "user_ca": ca, "time": float(at), "reannounce": reannounce}


class ChannelServer(threading.Thread):
    """Accepts the host's connections on the channel, one at a time: one hello line in, one answer out."""

    def __init__(self, listener: Any, on_hello: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__(name="channel", daemon=True)
        self.listener, self.on_hello = listener, on_hello
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.5)
                if not ready:
                    continue
                conn = self.listener.accept()
            except (OSError, ValueError) as e:
                if self.stopped.is_set():
                    return
                log("channel.accept.failed", error=str(e))
                time.sleep(0.1)
                continue
            with conn:
                self.serve_one(conn)

    def serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(CHANNEL_IO_TIMEOUT)
        try:
            line = read_line(conn)
        except OSError as e:
            log("channel.read.failed", error=str(e))
            return
        try:
            answer = self.on_hello(parse_hello(json.loads(line)))
        except (ValueError, RecursionError) as e:  # HelloError, bad JSON or nesting too deep for the parser
            log("channel.refused", error=str(e)[:200])
            answer = {"shoes_vz": "error", "version": CHANNEL_VERSION, "error": str(e)[:500]}
        except OSError as e:  # e.g. ssh-keygen missing: say so to the host rather than hang up
            log("channel.failed", error=str(e))
            answer = {"shoes_vz": "error", "version": CHANNEL_VERSION, "error": f"the guest could not comply: {e}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


# -- this boot's identity: the /exec token, the SSH host key, whom sshd trusts ---------------------

HOST_KEY, USER_CA, PRINCIPALS, STATE = "ssh_host_ed25519_key", "user_ca.pub", "principals", "state.json"


class Identity:
    """What this guest is for this boot, in --state-dir (the sshd drop-in names these files):

    - `ssh_host_ed25519_key` (+ `.pub`): a host key minted when the host first says hello, and again
      after a restore, so the key the agent pins is this runner's and no other's;
    - `user_ca.pub` and `principals`: sshd trusts certificates of the agent's CA whose principal is
      this runner's id, nothing else;
    - `state.json` (0600): token, runner id and hello count, so a sim restore resumes it."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.runner_id = ""
        self.token = ""
        self.host_key = ""
        self.hellos = 0
        self.boot_id = secrets.token_hex(8)

    def path(self, name: str) -> str:
        if not self.state_dir:
            raise OSError("no --state-dir: this runner-agent cannot keep sshd's per-boot files")
        return os.path.join(self.state_dir, name)

    def new_token(self) -> None:
        self.token = secrets.token_urlsafe(32)

    def clear(self) -> None:
        """A fresh boot: nobody is trusted until the host says hello (sshd falls back to the image's key)."""
        if not self.state_dir:
            return
        for name in (HOST_KEY, HOST_KEY + ".pub", USER_CA, PRINCIPALS, STATE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.state_dir, name))

    def mint_host_key(self) -> None:
        """A fresh ed25519 host key through ssh-keygen (sshd loads host keys at every connection)."""
        keygen = shutil.which("ssh-keygen", path=os.environ.get("PATH", "") + ":/usr/bin:/usr/local/bin") \
            or "/usr/bin/ssh-keygen"
        target = self.path(HOST_KEY)
        tmp = f"{target}.new.{os.getpid()}"
        for p in (tmp, tmp + ".pub"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        try:
            done = subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"shoes-vz-{self.boot_id}",
                                   "-f", tmp], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=15, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise OSError(f"ssh-keygen could not run: {e}") from None
        if done.returncode != 0:
            raise OSError(f"ssh-keygen failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:200]}")
        with open(tmp + ".pub") as f:
            public = " ".join(f.read().split()[:2])
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)  # the private key first: sshd pairs them by content, not by name
        os.replace(tmp + ".pub", target + ".pub")
        self.host_key = public

    def trust(self, user_ca: str, runner_id: str) -> None:
        """sshd admits certificates of `user_ca` for principal `runner_id`, and only those."""
        _write_atomic(self.path(USER_CA), user_ca.strip() + "\n", 0o644)
        _write_atomic(self.path(PRINCIPALS), runner_id + "\n", 0o644)
        self.runner_id = runner_id

    def save(self, clock_offset: float) -> None:
        if not self.state_dir:
            return
        _write_atomic(self.path(STATE), json.dumps({
            "boot_id": self.boot_id, "runner_id": self.runner_id, "token": self.token, "host_key": self.host_key,
            "hellos": self.hellos, "clock_offset": clock_offset, "saved_at": time.time() + clock_offset,
        }) + "\n", 0o600)

    def resume(self) -> float:
        """Take back a saved identity (a sim restore: this process is new, the guest it models is not);
        the clock offset of a guest whose clock stood still since the save."""
        with open(self.path(STATE)) as f:
            state = json.load(f)
        self.boot_id, self.runner_id = str(state["boot_id"]), str(state["runner_id"])
        self.token, self.host_key, self.hellos = str(state["token"]), str(state["host_key"]), int(state["hellos"])
        # the VM's clock stood still from the save (the host's time then: `frozen_at`) to now
        if "frozen_at" in state:
            at_save = float(state["frozen_at"]) + float(state.get("clock_offset", 0.0))
        else:
            at_save = float(state["saved_at"])
        return at_save - time.time()


def _write_atomic(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- the daemon ----------------------------------------------------------------------------------


class Agent:
    """The daemon's object graph: this boot's identity, the runner watch, the channel's hellos, the
    announcements and the resume watch.

    The /exec token and the SSH host key change only when the host says hello over the channel (a
    fresh one after the first hello of a boot, and after a restore), so the host always knows them:
    a restored guest must not keep the token and host key it had when its slot was saved (every
    runner cloned from that slot would share them)."""

    def __init__(self, runner_dir: str, announcer: Announcer | None = None, token_file: str = "",
                 notify_deadline: float = NOTIFY_DEADLINE, resume_gap: float = RESUME_GAP,
                 resume_tick: float = RESUME_TICK, wall: Callable[[], float] | None = None,
                 mono: Callable[[], float] = time.monotonic, renew: Callable[[], None] = renew_dhcp,
                 state_dir: str = "", clock: Clock | None = None, ip: str = "", mac: str = "") -> None:
        self.watch = RunnerWatch(runner_dir)
        self.announcer, self.token_file, self.renew = announcer, token_file, renew
        self.notify_deadline = notify_deadline
        self.clock = clock or CLOCK
        self.ip, self.mac = ip, mac
        self._lock = threading.Lock()
        self.notifier: Notifier | None = None
        self.resume_watch = (ResumeWatch(self._on_resume, resume_gap, resume_tick, wall or self.clock.now, mono)
                             if resume_gap > 0 else None)
        self.identity = Identity(state_dir)
        self._set_token()

    @property
    def token(self) -> str:
        return self.identity.token

    def _set_token(self) -> None:
        self.identity.new_token()
        if self.token_file:
            write_token(self.token_file, self.identity.token)

    def resume(self) -> None:
        """A sim restore: the saved identity again, and a clock that stood still since the save."""
        self.clock.offset = self.identity.resume()
        if self.token_file:
            write_token(self.token_file, self.identity.token)
        if self.announcer is not None and self.identity.runner_id:
            self.announcer.runner_id = self.identity.runner_id
        log("resumed.identity", runner_id=self.identity.runner_id, clock_behind_s=round(-self.clock.offset, 1))

    def start(self) -> None:
        self._announce(None)
        if self.resume_watch is not None:
            self.resume_watch.start()

    def stop(self) -> None:
        if self.resume_watch is not None:
            self.resume_watch.stop()
        with self._lock:
            if self.notifier is not None:
                self.notifier.cancel()

    def on_hello(self, hello: dict[str, Any]) -> dict[str, Any]:
        """The host said hello over the channel (already validated): step the clock, renew the identity
        when this is a new runner or a restore, answer with what the agent needs."""
        with self._lock:
            clock = self.clock.step_to(hello["time"])
            if self.resume_watch is not None:
                self.resume_watch.rebase()  # our own step is no restore
            fresh = self.identity.hellos == 0 or hello["reannounce"] or hello["runner_id"] != self.identity.runner_id
            if fresh:
                if self.identity.hellos:
                    self._set_token()  # the first hello of a boot keeps the boot's token
                self.identity.mint_host_key()
                self.identity.trust(hello["user_ca"], hello["runner_id"])
            self.identity.hellos += 1
            self.identity.save(self.clock.offset)
            answer = {
                "shoes_vz": "welcome", "version": CHANNEL_VERSION, "runner_id": hello["runner_id"],
                "nonce": hello["nonce"], "addresses": detect_addresses(self.ip, self.mac), "token": self.identity.token,
                "host_key": self.identity.host_key, "boot_id": self.identity.boot_id, "clock": clock,
                "renewed": fresh, "agent_version": VERSION,
            }
        log("channel.hello", runner_id=hello["runner_id"], fresh=fresh, reannounce=hello["reannounce"],
            clock_stepped_s=clock["stepped"], addresses=",".join(a["ip"] for a in answer["addresses"]) or "none")
        if fresh and self.announcer is not None:
            self.announcer.runner_id = hello["runner_id"]
        if hello["reannounce"]:
            threading.Thread(target=self.reannounce, args=("the host announced a restore",), daemon=True).start()
        return answer

    def reannounce(self, reason: str) -> None:
        """DHCP renew and notify again (after a restore, or on SIGHUP)."""
        log("reannounce", reason=reason)
        self._announce(self.renew)

    def _on_resume(self, frozen: float) -> None:
        self.reannounce(f"stood still {frozen:.1f}s")

    def _announce(self, prepare: Callable[[], None] | None) -> None:
        with self._lock:
            previous = self.notifier
            if previous is not None:
                previous.cancel()
            if self.announcer is None:
                log("notify.skipped", reason="no --notify-url")
                return

            def first_the_previous_then_prepare() -> None:
                # an attempt of the previous notifier still in flight should not land after ours
                if previous is not None:
                    previous.join(5.0)
                if prepare is not None:
                    prepare()

            self.notifier = Notifier(self.announcer, self.notify_deadline, first_the_previous_then_prepare)
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
               "(see `install --help`). SIGHUP makes it re-announce itself (DHCP renew, notify).",
    )
    p.add_argument("--notify-url", default="", type=parse_notify_url,
                   help="the host's IP-notify endpoint, e.g. http://192.168.64.1:8081/notify-ip; "
                        "'auto[:PORT]' = http://<default gateway>:PORT/notify-ip (PORT 8081), resolved at each try; "
                        "empty: no notify")
    p.add_argument("--listen", default="0.0.0.0:8080", type=parse_listen, help="host:port to serve on")
    p.add_argument("--channel", default="", type=parse_channel,
                   help=f"the runner channel the host says hello on: vsock:PORT (a Mac: vsock:{CHANNEL_PORT}) or "
                        "unix:PATH (the sim); empty: none (the host then cannot make this VM a runner)")
    p.add_argument("--state-dir", default="/var/run/shoes-vz" if sys.platform == "darwin" else "",
                   help="this boot's SSH host key, trusted CA and principals (sshd's drop-in names them)")
    p.add_argument("--clock", default="auto", choices=CLOCK_MODES,
                   help="how the host's time is applied: system (settimeofday, root), model (the sim: an "
                        "offset for our own timestamps), auto (system as root on macOS, else model)")
    p.add_argument("--resumed", action="store_true", help=argparse.SUPPRESS)  # the sim's restore
    p.add_argument("--runner-dir", default=os.path.expanduser("~/actions-runner"),
                   help="the GitHub Actions runner directory (holds .runner and _diag/)")
    p.add_argument("--mac", default="", help="this guest's MAC (default: detect; en0 on macOS)")
    p.add_argument("--ip", default="",
                   help="this guest's IP (default: detect); when given, the notify is sent from it")
    p.add_argument("--runner-id", default="", help="sent in the notify until the host names us (default: the hostname)")
    p.add_argument("--token-file", default="", help="also write the /exec token here (mode 0600)")
    p.add_argument("--resume-gap", type=float, default=RESUME_GAP,
                   help="re-announce when the guest stood still this many seconds (VM restored); 0: never")
    p.add_argument("--notify-deadline", type=float, default=NOTIFY_DEADLINE, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=VERSION)
    return p


def serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    host, port = args.listen
    CLOCK.configure(args.clock)
    announcer = Announcer(args.notify_url, args.runner_id or socket.gethostname(), args.ip, args.mac) \
        if args.notify_url else None
    agent = Agent(args.runner_dir, announcer, args.token_file, args.notify_deadline, args.resume_gap,
                  state_dir=args.state_dir, ip=args.ip, mac=args.mac)
    if args.state_dir:
        try:
            os.makedirs(args.state_dir, mode=0o755, exist_ok=True)
            if args.resumed:
                agent.resume()
            else:
                agent.identity.clear()
        except (OSError, ValueError, KeyError) as e:
            log("state.failed", state_dir=args.state_dir, error=str(e))
            return 1
    channel = None
    if args.channel[0]:
        try:
            channel = ChannelServer(channel_listener(*args.channel), agent.on_hello)
        except OSError as e:
            log("channel.failed", channel=":".join(args.channel), error=str(e))
            return 1
    try:
        server = Server((host, port), agent)
    except OSError as e:
        log("listen.failed", address=f"{host}:{port}", error=str(e))
        if channel is not None:
            channel.listener.close()
        return 1

    def stop(signum: int, _frame: Any) -> None:
        log("stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    def hangup(_signum: int, _frame: Any) -> None:
        threading.Thread(target=agent.reannounce, args=("SIGHUP",), daemon=True).start()

    # handlers first: SIGHUP's default action would kill a daemon that has just announced itself
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangup)
    log("listening", address=f"{host}:{server.server_port}", runner_dir=args.runner_dir, pid=os.getpid(),
        channel=":".join(args.channel) or "none", clock=CLOCK.mode)
    if channel is not None:
        channel.start()
    agent.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        agent.stop()
        if channel is not None:
            channel.stop()
        server.server_close()
    log("stopped")
    return 0


# -- install as a LaunchDaemon (run inside a macOS guest while building a template) ------------------

LABEL = "dev.shoes-vz.runner-agent"
PROGRAM = "/usr/local/libexec/shoes-vz-runner-agent"
LAUNCH_DAEMONS = "/Library/LaunchDaemons"
LOG_FILE = "/var/log/shoes-vz-runner-agent.log"
GUEST_STATE_DIR = "/var/run/shoes-vz"  # this boot's host key, trusted CA and principals (Identity)
SSHD_CONFIG = "/etc/ssh/sshd_config"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/050-shoes-vz.conf"  # before macOS's own 100-macos.conf: first value wins
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


def sshd_dropin(state_dir: str = GUEST_STATE_DIR) -> bytes:
    """sshd's part (docs/security.md §9): certificates of the agent's CA, for this runner's id alone;
    the per-boot host key first (the image's own until the host's first hello); no other way in.
    macOS starts sshd per connection (launchd, inetd style), so every file here is read afresh."""
    return "\n".join([
        "# shoes-vz runner-agent (written by `install`): per-runner SSH certificates, a per-boot host key",
        f"HostKey {state_dir}/{HOST_KEY}",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        f"TrustedUserCAKeys {state_dir}/{USER_CA}",
        f"AuthorizedPrincipalsFile {state_dir}/{PRINCIPALS}",
        "AuthorizedKeysFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "",
    ]).encode()


def sshd_includes_dropins(config_text: str) -> bool:
    """Whether sshd_config includes sshd_config.d before anything else could set our keywords."""
    for line in config_text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        return words[0].lower() == "include" and any("sshd_config.d" in w for w in words[1:])
    return False


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
    daemon_args = ["--notify-url", args.notify_url, "--listen", args.listen, "--runner-dir", runner_dir,
                   "--channel", f"vsock:{args.channel_port}", "--state-dir", GUEST_STATE_DIR]
    files = [(PROGRAM, program, 0o755),
             (layout.plist, daemon_plist(layout.label, daemon_args, daemon_path(python)), 0o644),
             (SSHD_DROPIN, sshd_dropin(), 0o644)]
    try:
        with open(layout.on_disk(SSHD_CONFIG)) as f:
            includes = sshd_includes_dropins(f.read())
    except OSError:
        includes = False
    if not includes:
        print(f"warning: {SSHD_CONFIG} does not start with `Include /etc/ssh/sshd_config.d/*`: add it as its "
              f"first line, or sshd ignores {SSHD_DROPIN} and the agent's certificates are refused")

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
    # the plist first: no reload at boot
    paths = [layout.on_disk(layout.plist), layout.on_disk(PROGRAM), layout.on_disk(SSHD_DROPIN)]
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
        p.add_argument("--channel-port", type=int, default=CHANNEL_PORT,
                       help=f"the vsock port the host says hello on (default {CHANNEL_PORT}; the agent's is fixed)")
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
