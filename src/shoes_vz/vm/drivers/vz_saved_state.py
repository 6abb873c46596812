"""The vz driver's warm path (DESIGN §12): restore from State.save, check the guest lives, save.

A part of `VZDriver` (`vz.py`), kept apart for its size; every method runs on the VM queue unless it
says otherwise.

Restore: the configuration was checked with `validateSaveRestoreSupportWithError_` before the VM
was made (`vz.py`). Then restore → resume → a liveness probe, and every step has a deadline, because
some mismatches fail silently — a different network-device count makes VZ restore and resume, yet
run no guest code (tailscale PR #19331) — and a restore itself may never call back:
  * restore + resume must finish within `options.restore_timeout`;
  * the resumed guest must answer a vsock connection within `options.live_timeout`: its kernel
    refuses a port nobody listens on at once, so any answer (even "refused") is a sign of life, and
    silence (or a time-out error) means the guest runs no code.
Whatever fails, the save file is deleted (single use), the VM stopped and *released* — the
framework may count a live VM object against the host's VM limit — and the bundle boots cold with a
fresh MachineIdentifier, in a new block so the old handler's references are gone first. The cold
boot starts from the disk as it was at save time, frozen mid-run, which is like a power loss: macOS
copes with that (Apple's sample does the same).

Save: pause → delete any old State.save (a save does not overwrite; lima PR #2900) → save → stop,
so the disk stays exactly as saved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoes_vz.core.errors import BundleError
from shoes_vz.vm.drivers.vz_config import check_save_restore, file_url
from shoes_vz.vm.drivers.vz_errors import VZDriverError, describe, from_nserror
from shoes_vz.vm.exit_status import VMExit

if TYPE_CHECKING:
    from shoes_vz.vm.bundle import Bundle
    from shoes_vz.vm.drivers.base import DriverOptions

SAVE_TIMEOUT = 600.0    # pause + save of a large guest's memory
LIVENESS_PORT = 1       # a vsock port nothing in the guest listens on
POSIX_DOMAIN, ETIMEDOUT = "NSPOSIXErrorDomain", 60  # macOS errno: the guest never answered


class SavedStateMixin:
    if TYPE_CHECKING:  # provided by VZDriver
        bundle: Bundle
        options: DriverOptions
        _vm: Any
        _cfg: Any
        _vz: Any
        _foundation: Any
        _phase: str
        _lock: threading.Lock
        _stop_requested: bool
        _done: threading.Event
        _attempt: int

        def _async(self, fn: Callable[[], Any], what: str = ...) -> None: ...
        def _guard(self, fn: Callable[..., Any], what: str) -> Callable[..., None]: ...
        def _finish(self, exit: VMExit, error: str | None) -> None: ...
        def _log(self, message: str) -> None: ...
        def _running(self) -> None: ...
        def _new_vm(self, cfg: Any) -> None: ...
        def _build(self, *, fresh_identity: bool) -> Any: ...
        def _release_vm(self) -> None: ...
        def _start_on_queue(self) -> None: ...
        def _stop_on_queue(self) -> None: ...
        def _state_name(self, state: int) -> str: ...
        def _set_phase(self, phase: str) -> None: ...

    # -- restore ------------------------------------------------------------------------------------
    def _restore_on_queue(self) -> None:
        self._phase = "restoring"
        vm, attempt = self._vm, self._attempt
        self._after(self.options.restore_timeout, attempt, "restoring",
                    f"the restore did not finish within {self.options.restore_timeout:g}s")
        url = file_url(self._foundation, self.bundle.saved_state)
        vm.restoreMachineStateFromURL_completionHandler_(
            url, self._guard(lambda err: self._restored(vm, err), "restore handler"))

    def _restored(self, vm: Any, err: Any) -> None:
        if vm is not self._vm or self._phase != "restoring":
            return  # given up on already (deadline)
        self._discard_saved_state()  # single-use, whatever happened (reference §3.7)
        if err is not None:
            e = from_nserror(err, "restore State.save", default_exit=VMExit.START_FAILED)
            if e.exit is VMExit.CAPACITY:
                self._finish(e.exit, str(e))
            else:
                self._cold_boot_after(str(e))
            return
        vm.resumeWithCompletionHandler_(self._guard(lambda e: self._resumed(vm, e), "resume handler"))

    def _resumed(self, vm: Any, err: Any) -> None:
        if vm is not self._vm or self._phase != "restoring":
            return
        if err is not None:
            reason = str(from_nserror(err, "resume the restored VM", default_exit=VMExit.START_FAILED))
            self._abandon_restore(vm, reason)
            return
        devices = vm.socketDevices() or []
        if self.options.live_timeout <= 0 or not devices:
            self._restore_succeeded("")
            return
        self._phase = "checking"  # is the guest running code? (tailscale PR #19331: maybe not)
        self._after(self.options.live_timeout, self._attempt, "checking",
                    f"the restored guest showed no sign of life within {self.options.live_timeout:g}s "
                    f"(vsock port {LIVENESS_PORT} unanswered)")
        devices[0].connectToPort_completionHandler_(
            LIVENESS_PORT, self._guard(lambda conn, e: self._life_answer(vm, conn, e), "vsock handler"))

    def _life_answer(self, vm: Any, conn: Any, err: Any) -> None:
        if conn is not None:
            conn.close()
        if vm is not self._vm or self._phase != "checking":
            return
        domain, code, text = describe(err) if err is not None else ("", None, "")
        if domain == POSIX_DOMAIN and code == ETIMEDOUT:
            self._abandon_restore(vm, f"the restored guest did not answer on vsock ({text})")
            return
        self._restore_succeeded("accepted" if conn is not None else f"refused: {text}")

    def _restore_succeeded(self, life: str) -> None:
        self._log("restored State.save and resumed the guest (warm start)"
                  + (f"; it answers on vsock ({life})" if life else ""))
        self._record_restore(True, "")
        self._running()

    def _after(self, seconds: float, attempt: int, phase: str, reason: str) -> None:
        """Give up on this restore attempt unless it has left `phase` within `seconds` (any thread)."""

        def overdue() -> None:
            if self._attempt == attempt and self._phase == phase and self._vm is not None:
                self._abandon_restore(self._vm, reason)

        # the timer holds no VM reference: a given-up VM must be free to go (see the module docstring)
        timer = threading.Timer(seconds, lambda: self._async(overdue, "restore deadline"))
        timer.daemon = True
        timer.start()

    def _abandon_restore(self, vm: Any, reason: str) -> None:
        self._phase = "abandoning"
        if vm.canStop():
            vm.stopWithCompletionHandler_(self._guard(lambda _e: self._cold_boot_after(reason), "stop handler"))
        else:
            self._cold_boot_after(reason)

    def _cold_boot_after(self, reason: str) -> None:
        """Forget the saved state, release the VM, take a fresh identity (DESIGN §12), boot cold."""
        self._discard_saved_state()
        self._log(f"{reason}; deleted State.save, cold-booting with a fresh MachineIdentifier")
        self._record_restore(False, reason)
        self._release_vm()
        self._async(self._cold_start, "cold boot")  # a new block: the old handler's VM reference is gone

    def _cold_start(self) -> None:
        self._new_vm(self._build(fresh_identity=True))
        self._start_on_queue()

    def _record_restore(self, restored: bool, error: str) -> None:
        """RuntimeMetadata.json tells the agent whether a warm start happened (and why not)."""
        try:
            self.bundle.update_metadata(restored=restored, restore_error=error)
        except (OSError, BundleError) as e:
            self._log(f"could not record the restore outcome: {e}")

    def _discard_saved_state(self) -> None:
        try:
            self.bundle.saved_state.unlink(missing_ok=True)
        except OSError as e:
            self._log(f"could not delete {self.bundle.saved_state}: {e}")

    # -- save (any thread, then the queue) -----------------------------------------------------------
    def save_state(self) -> None:
        if self._vm is None or self._done.is_set():
            raise VZDriverError("there is no running VM to save", exit=VMExit.START_FAILED)
        problem = check_save_restore(self._cfg)
        if problem is not None:
            raise problem
        result: dict[str, VZDriverError | None] = {}
        finished = threading.Event()

        def outcome(error: VZDriverError | None) -> None:
            result["error"] = error
            finished.set()

        self._async(lambda: self._save_on_queue(outcome))
        if not finished.wait(float(self.options.extra.get("save_timeout", SAVE_TIMEOUT))):
            raise VZDriverError("saving the VM state timed out", exit=VMExit.START_FAILED)
        if result["error"] is not None:
            raise result["error"]

    def _save_on_queue(self, outcome: Callable[[VZDriverError | None], None]) -> None:
        vm = self._vm
        if vm.state() != self._vz.VZVirtualMachineStateRunning:
            outcome(VZDriverError(f"cannot save: the VM is {self._state_name(vm.state())}",
                                  exit=VMExit.START_FAILED))
            return
        self._phase = "saving"

        def paused(err: Any) -> None:
            if err is not None:
                self._phase = "running"
                outcome(from_nserror(err, "pause the VM", default_exit=VMExit.START_FAILED))
                return
            self._discard_saved_state()  # the framework does not overwrite an old save
            vm.saveMachineStateToURL_completionHandler_(file_url(self._foundation, self.bundle.saved_state),
                                                        self._guard(saved, "save handler"))

        def saved(err: Any) -> None:
            if err is not None:
                self._discard_saved_state()
                vm.resumeWithCompletionHandler_(self._guard(lambda _e: self._set_phase("running"),
                                                            "resume handler"))
                outcome(from_nserror(err, "save the VM state", default_exit=VMExit.START_FAILED))
                return
            with self._lock:
                self._stop_requested = True
            outcome(None)
            self._stop_on_queue()  # paused → stopped: the disk stays exactly as saved

        try:
            vm.pauseWithCompletionHandler_(self._guard(paused, "pause handler"))
        except BaseException as e:
            outcome(VZDriverError(f"could not pause the VM: {e}", exit=VMExit.START_FAILED))
            raise


__all__ = ["LIVENESS_PORT", "SAVE_TIMEOUT", "SavedStateMixin"]
