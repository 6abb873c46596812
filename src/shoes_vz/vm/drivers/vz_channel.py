"""The vz driver's runner channel (docs/security.md §8): vsock to the guest's runner-agent.

A part of `VZDriver` (`vz.py`). Only this process holds the VZVirtualMachine, so only it can open
the guest's vsock port: `socketDevices()[0].connectToPort_completionHandler_` on the VM's queue
(reference §2.7, rule 1), the connection's descriptor duplicated in the handler (the connection
closes its own when it goes), then the one-line exchange of `vm/channel.py` off the queue. Another
guest has no path to this socket: vsock is host↔guest only, and the host end is this VM's device.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoes_vz.core.errors import DriverError
from shoes_vz.vm.channel import CHANNEL_PORT, ChannelError, exchange
from shoes_vz.vm.drivers.vz_errors import describe

if TYPE_CHECKING:
    from shoes_vz.vm.bundle import Bundle

POSIX_DOMAIN = "NSPOSIXErrorDomain"
_NOT_YET = {54, 61}  # macOS ECONNRESET, ECONNREFUSED: the guest kernel runs, nobody listens (still booting)


class ChannelMixin:
    if TYPE_CHECKING:  # provided by VZDriver
        bundle: Bundle
        _vm: Any
        _phase: str

        def _async(self, fn: Callable[[], Any], what: str = ...) -> None: ...
        def _guard(self, fn: Callable[..., Any], what: str) -> Callable[..., None]: ...
        def _abandon_restore(self, vm: Any, reason: str) -> None: ...

    def channel(self, line: bytes, timeout: float) -> bytes:
        fd = self._connect_vsock(CHANNEL_PORT, timeout)
        try:
            return exchange(fd, line, timeout)
        finally:
            os.close(fd)

    def _connect_vsock(self, port: int, timeout: float) -> int:
        """A descriptor of our own for a new vsock connection to the guest's `port` (any thread)."""
        done = threading.Event()
        result: dict[str, Any] = {}

        def answered(conn: Any, err: Any) -> None:
            if conn is not None:
                try:
                    result["fd"] = os.dup(conn.fileDescriptor())
                finally:
                    conn.close()
            else:
                result["error"] = describe(err) if err is not None else ("", None, "no connection")
            done.set()

        def connect() -> None:
            vm = self._vm
            if self._phase != "running" or vm is None or not (vm.socketDevices() or []):
                result["error"] = ("", None, f"the VM is {self._phase}")
                done.set()
                return
            vm.socketDevices()[0].connectToPort_completionHandler_(port, self._guard(answered, "vsock handler"))

        self._async(connect, "runner channel")
        if not done.wait(timeout):
            raise ChannelError(f"the guest did not accept vsock port {port} within {timeout:g}s", retry=True)
        if "fd" in result:
            return int(result["fd"])
        domain, code, text = result["error"]
        not_yet = domain == "" or (domain == POSIX_DOMAIN and code in _NOT_YET)
        raise ChannelError(f"vsock port {port}: {text}", retry=not_yet)

    def cold_boot(self, reason: str) -> None:
        if self._phase != "running" or self.bundle.read_metadata().get("restored") is not True:
            raise DriverError(f"cold-boot: only a running restored VM (this one is {self._phase})")

        def go() -> None:
            if self._vm is not None and self._phase == "running":
                self._abandon_restore(self._vm, reason or "the restored guest did not re-announce")

        self._async(go, "cold boot")


__all__ = ["ChannelMixin"]
