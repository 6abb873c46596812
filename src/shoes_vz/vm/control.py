"""`BUNDLE/control.sock`: one JSON line in, one JSON line out.

Commands: `status`, `stop` (graceful, then hard after the grace period), `force-stop`, `save`,
`channel` (one exchange on the guest's runner channel: `line` out, `answer` back; vm/channel.py) and
`cold-boot` (a restored guest that did not re-announce boots cold, `reason` recorded). The server
side runs in a thread of the `vm run` process; the client side is asyncio (the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
COMMANDS = ("status", "stop", "force-stop", "save", "channel", "cold-boot")
MAX_REQUEST = 64 * 1024  # one JSON line; a `channel` line carries a hello (about 1 KiB)
Handler = Callable[[str, dict[str, Any]], dict[str, Any]]


class ControlServer:
    """A Unix-socket server answering control commands through `handler` (called per request)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        outer = self

        class _Req(socketserver.StreamRequestHandler):
            timeout = 5.0  # a client that connects and says nothing does not hold a thread forever

            def handle(self) -> None:
                try:
                    line = self.rfile.readline(MAX_REQUEST)
                except OSError:
                    return
                try:
                    req = json.loads(line)
                    cmd = req.get("command", "") if isinstance(req, dict) else ""
                    if cmd not in COMMANDS:
                        reply: dict[str, Any] = {"ok": False, "error": f"unknown command {cmd!r}"}
                    else:
                        reply = {"ok": True, **outer.handler(cmd, req)}
                except Exception as e:  # a bad request or a driver failure: answer, never die
                    reply = {"ok": False, "error": str(e), "retry": bool(getattr(e, "retry", False))}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        _private_parent(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = socketserver.ThreadingUnixStreamServer(str(path), _Req)
        # non-daemon handlers joined at close: a `save` reply reaches the agent before we exit
        self._server.daemon_threads = False
        self._server.block_on_close = True
        os.chmod(path, 0o600)
        # a short poll: `close` (every VM's exit) waits up to one interval for the loop to notice
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _private_parent(path: Path) -> None:
    """A socket outside its bundle (see `Bundle.control_socket`) lives in a directory only this user
    may enter; one made by anybody else is refused."""
    if path.name == "control.sock":
        return  # inside its bundle
    parent = path.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = parent.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{parent} must be owned by uid {os.getuid()} with mode 0700")


async def request(path: Path, command: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one command (with its `fields`) to a vm process; raises OSError/TimeoutError when it does
    not answer."""

    async def _go() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REQUEST)
        try:
            writer.write(json.dumps({**fields, "command": command}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise OSError(f"{path}: no answer to {command!r}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    return await asyncio.wait_for(_go(), timeout)
