"""The runner channel, host side: one exchange over a stream bound to one VM (docs/security.md §8).

The guest's runner-agent listens on vsock port CHANNEL_PORT (the sim: a Unix socket in the bundle
that only that guest's mount namespace shows it). Only `vm run`, which owns the VM, can open it —
the vz driver through the VM's own socket device, the sim driver through the bundle's socket — and
another guest cannot reach it at all. The agent asks `vm run` over the control socket (`channel`),
so its code path is the same for every driver. One exchange per connection: one JSON line from the
host (the hello), one line back (the answer), both bounded in size and time. What the lines mean is
the agent's business (`agent/runner_channel.py`); here they are bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from pathlib import Path

from shoes_vz.core.errors import DriverError

CHANNEL_PORT = 8079  # the runner-agent's default (guest/runner_agent.py) says the same
MAX_LINE = 16 * 1024
SOCKET_NAME = "channel.sock"  # in the sim's per-VM vsock directory (Bundle.vsock_dir)
_NOT_LISTENING = {errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE}


class ChannelError(DriverError):
    """The exchange did not happen. `retry`: the guest does not listen yet (still booting) — ask again."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


def exchange(fd: int, line: bytes, timeout: float, limit: int = MAX_LINE) -> bytes:
    """Write `line` (plus a newline) to the stream `fd`, read one line back; the fd stays open.

    Plain reads and writes under poll, so any stream works: a Unix socket or a vsock connection's
    descriptor (which CPython cannot wrap on macOS)."""
    if b"\n" in line or len(line) > limit:
        raise ChannelError(f"a channel line must be one line of at most {limit} bytes")
    deadline = time.monotonic() + timeout
    out = line + b"\n"
    os.set_blocking(fd, False)
    while out:
        _wait(fd, select.POLLOUT, deadline, "send the hello")
        try:
            out = out[os.write(fd, out):]
        except BlockingIOError:
            continue
        except OSError as e:
            raise ChannelError(f"the guest closed the channel: {e.strerror or e}", retry=e.errno in _NOT_LISTENING) \
                from None
    data = b""
    while b"\n" not in data:
        _wait(fd, select.POLLIN, deadline, "answer")
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        except OSError as e:
            raise ChannelError(f"reading the guest's answer failed: {e.strerror or e}",
                               retry=e.errno in _NOT_LISTENING) from None
        if not chunk:
            # a guest kernel that nobody listens for resets at once; a listener never hangs up unanswered
            raise ChannelError("the guest hung up without an answer", retry=not data)
        data += chunk
        if len(data) > limit:
            raise ChannelError(f"the guest's answer is longer than {limit} bytes")
    return data.split(b"\n", 1)[0]


def _wait(fd: int, event: int, deadline: float, what: str) -> None:
    poller = select.poll()
    poller.register(fd, event | select.POLLERR | select.POLLHUP)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChannelError(f"the guest did not {what} in time (a guest that runs no code?)")
        if poller.poll(left * 1000):
            return


def unix_exchange(path: Path, line: bytes, timeout: float) -> bytes:
    """The sim's channel: connect to the VM's Unix socket at `path`, then `exchange`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            with _short(path) as name:
                s.connect(name)
        except FileNotFoundError:
            raise ChannelError("the guest's runner-agent does not listen on its channel yet", retry=True) from None
        except OSError as e:
            raise ChannelError(f"cannot reach the guest's channel: {e.strerror or e}",
                               retry=e.errno in _NOT_LISTENING) from None
        return exchange(s.fileno(), line, timeout)


@contextlib.contextmanager
def _short(path: Path):  # type: ignore[no-untyped-def]
    """`path`, or the same socket through /proc/self/fd when it is too long for sun_path (Linux)."""
    if len(os.fsencode(path)) <= 100 or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


__all__ = ["CHANNEL_PORT", "MAX_LINE", "SOCKET_NAME", "ChannelError", "exchange", "unix_exchange"]
