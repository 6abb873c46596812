"""`PIDLock`: one live process per resource — a server's database, an agent's state directory.

As tart's PIDLock: an flock(2) on a lock file, held for the process's whole life. The file says who
holds it (pid, role, address, start time; JSON), so a second process is refused with a message that
names the first. The kernel drops the lock when its holder dies, so a lock file a dead process left
behind is simply taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from shoes_vz.core.errors import InUse


@dataclass(frozen=True)
class Holder:
    pid: int
    role: str
    address: str = ""
    host: str = ""
    started_at: float = 0.0

    def describe(self) -> str:
        """`pid 4242 (shoes-vz server on 127.0.0.1:50051, since 2026-12-01 09:41:07)`"""
        where = f" on {self.address}" if self.address else ""
        host = f" at host {self.host}" if self.host and self.host != socket.gethostname() else ""
        since = time.strftime(", since %Y-%m-%d %H:%M:%S", time.localtime(self.started_at)) if self.started_at else ""
        return f"pid {self.pid} (shoes-vz {self.role}{where}{host}{since})"


class PIDLock:
    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self._fd = -1
        self._me = Holder(os.getpid(), role, host=socket.gethostname(), started_at=time.time())

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self, what: str, fix: str) -> None:
        """Hold the lock until `release` (or this process ends). InUse — naming the holder, `what`
        it holds and the `fix` — when another live process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = holder.describe() if holder is not None else "another process (it has not written its pid yet)"
            raise InUse(f"{what} is in use by {who}; lock {self.path}. {fix}") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write()

    def update(self, *, address: str) -> None:
        """Say where this process serves, for the next one refused to read."""
        self._me = replace(self._me, address=address)
        if self.held:
            self._write()

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # the file stays: the next holder overwrites it
            self._fd = -1

    def holder(self) -> Holder | None:
        """Who holds the lock now (None: nobody alive does)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _write(self) -> None:
        data = (json.dumps(asdict(self._me)) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def __enter__(self) -> PIDLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> Holder | None:
    with contextlib.suppress(OSError, ValueError, TypeError):
        raw = json.loads(os.pread(fd, 4096, 0) or b"null")
        if isinstance(raw, dict):
            return Holder(**{k: raw[k] for k in ("pid", "role", "address", "host", "started_at") if k in raw})
    return None


__all__ = ["Holder", "PIDLock"]
