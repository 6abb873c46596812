"""`HostSlots`: the host-wide VM count, one lock file per slot.

Apple lets a host run 2 macOS guests, whoever starts them. Every shoes-vz process that starts a VM
(`vm run` for runners, warm-slot builds and `freeze --boot`; `template create`'s installer in its own
process) holds one slot for the VM's whole life: an exclusive `flock` on `<dir>/slot-N.lock`, N below
the limit. The kernel drops a lock when its process dies, however it dies, so a crashed holder never
leaks a slot, and no combination of those processes exceeds the limit.

A holder writes `pid` and what it runs into its file. `holders()` counts the slots held at one moment
(by any process, this one included), which tells the two capacity failures apart:
  * no free slot → the host runs its limit of VMs; a clean capacity error, retried later;
  * the framework refused a VM (VZ code 6) while this process holds a slot → fewer VMs than the limit
    run by our count: a VM outside shoes-vz (tart, UTM, another user) or Apple's quota leaking after
    guest shutdowns, which only a reboot clears — the host needs attention (`vm.process`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from shoes_vz.core.errors import CapacityExhausted

TAKE_PASSES, TAKE_PAUSE = 3, 0.02


@dataclass(frozen=True)
class Holder:
    slot: int
    pid: int | None
    what: str

    def describe(self) -> str:
        return f"pid {self.pid or '?'} ({self.what or 'unknown'})"


class HeldSlot:
    """One slot, held until `release()` or the process exits."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> HeldSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class HostSlots:
    def __init__(self, directory: Path, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a host VM limit of {limit} allows no VM")
        self.directory = directory
        self.limit = limit

    def _path(self, index: int) -> Path:
        return self.directory / f"slot-{index}.lock"

    def _open(self, index: int) -> int | None:
        """A descriptor on the slot file, or None when this user may not open it (held by another)."""
        try:
            return os.open(self._path(index), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except PermissionError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink planted in our directory: never follow it
                return None
            raise

    def take(self, what: str) -> HeldSlot:
        """A free slot, or CapacityExhausted naming who holds them all."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for attempt in range(TAKE_PASSES):
            if attempt:
                time.sleep(TAKE_PAUSE)  # a `holders()` probe holds a free slot for microseconds
            for index in range(self.limit):
                slot = self._try(index, what)
                if slot is not None:
                    return slot
        who = ", ".join(h.describe() for h in self.holders()) or "by processes this user cannot see"
        raise CapacityExhausted(f"all {self.limit} host VM slots are held ({who}): this host runs its maximum of "
                                f"VMs; wait for one to stop (slots: {self.directory})")

    def _try(self, index: int, what: str) -> HeldSlot | None:
        fd = self._open(index)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {what}\n".encode())
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return HeldSlot(index, fd)

    def holders(self) -> list[Holder]:
        """The slots held right now, by any process (a slot this process holds counts too)."""
        held = []
        for index in range(self.limit):
            path = self._path(index)
            if not path.exists():
                continue
            fd = self._open(index)
            if fd is None:
                held.append(Holder(index, None, "not readable by this user"))
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.append(_holder(index, fd))
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return held


def _holder(index: int, fd: int) -> Holder:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        pid, _, what = text.partition(" ")
        if pid.isdigit():
            return Holder(index, int(pid), what)
    return Holder(index, None, "")


__all__ = ["HeldSlot", "Holder", "HostSlots"]
