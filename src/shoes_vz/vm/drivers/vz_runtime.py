"""PyObjC at run time: the lazy import and the private serial queue a VZVirtualMachine lives on.

Shared by the vz driver (`vz.py`) and the macOS installer (`shoes_vz.macos.install`). Why a private
serial queue, and why every VM call is a block on it, is explained in `vz.py`'s docstring (reference
§3.1–§3.2 B). This module itself imports no PyObjC at load time, so it imports on Linux.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from shoes_vz.vm.drivers.vz_errors import VZDriverError, config_error
from shoes_vz.vm.exit_status import VMExit

QUEUE_TIMEOUT = 30.0    # a VM queue that does not run a block this long is wedged
NEEDS_MACOS = "needs macOS with Virtualization.framework and PyObjC"


def import_pyobjc(what: str = "the vz driver") -> tuple[Any, Any, Any, Any]:
    """(Virtualization, Foundation, dispatch, objc), or a CONFIG_ERROR saying what is missing."""
    try:
        import dispatch  # type: ignore[import-not-found]
        import Foundation  # type: ignore[import-not-found]
        import objc  # type: ignore[import-not-found]
        import Virtualization  # type: ignore[import-not-found]
    except ImportError as e:
        raise config_error(f"{what} {NEEDS_MACOS} ({e}); on an Apple-silicon Mac install "
                           "shoes-vz[macos]") from None
    return Virtualization, Foundation, dispatch, objc


class SerialQueue:
    """A private serial dispatch queue: VMs are created on it and every later VM call runs on it."""

    def __init__(self, dispatch: Any, label: str) -> None:
        self._dispatch = dispatch
        self.queue = dispatch.dispatch_queue_create(label.encode(), None)  # None: serial (§3.2 B)

    def submit(self, block: Callable[[], None]) -> None:
        """Run `block` on the queue later. It must not raise: an exception there aborts the process."""
        self._dispatch.dispatch_async(self.queue, block)

    def call(self, fn: Callable[[], Any], timeout: float = QUEUE_TIMEOUT) -> Any:
        """Run `fn` on the queue from another thread and return its result (never from the queue)."""
        box: dict[str, Any] = {}
        ran = threading.Event()

        def block() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # carried back to the caller, never into libdispatch
                box["error"] = e
            finally:
                ran.set()

        self.submit(block)
        if not ran.wait(timeout):
            raise VZDriverError(f"the VM queue did not answer within {timeout:g}s", exit=VMExit.CRASHED)
        if "error" in box:
            raise box["error"]
        return box.get("value")


__all__ = ["NEEDS_MACOS", "QUEUE_TIMEOUT", "SerialQueue", "import_pyobjc"]
