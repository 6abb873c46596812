"""Why an address cannot be bound, and who holds it: the line a refused server or agent prints.

`cannot_bind(host, port)` names the problem of binding `host:port` now (None when it binds);
`who_listens(port)` names the process listening there — from /proc on Linux, from `lsof` on macOS
— or says nobody could be found (another user's process without the rights to see it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from pathlib import Path


def cannot_bind(host: str, port: int) -> str | None:
    """The reason `host:port` cannot be bound for listening (as a server binds it), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
            s.listen()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return f"the port is in use by {who_listens(port)}"
            return e.strerror or str(e)
    return None


def who_listens(port: int) -> str:
    """`pid 4242 (python -m shoes_vz.cli.main server …)`, or `another process` when it cannot be told."""
    pids = _linux_listeners(port) if Path("/proc/net/tcp").exists() else _lsof_listeners(port)
    if not pids:
        return "another process"
    return ", ".join(f"pid {pid} ({_command(pid)})" for pid in sorted(pids))


def _linux_listeners(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.add(int(proc.name))
                        break
    return found


def _lsof_listeners(port: int) -> set[int]:
    try:
        out = subprocess.run(["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fp"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {int(line[1:]) for line in out.splitlines() if line.startswith("p") and line[1:].isdigit()}


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        if raw:
            return " ".join(raw.decode(errors="replace").replace("\0", " ").split())[:160]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
        if out.stdout.strip():
            return " ".join(out.stdout.split())[:160]
    return "command unknown"


__all__ = ["cannot_bind", "who_listens"]
