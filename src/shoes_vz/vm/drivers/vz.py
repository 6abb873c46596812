"""The `vz` driver: one macOS guest through PyObjC's Virtualization.framework bindings.

PyObjC (`Virtualization`, `Foundation`, `dispatch`, `objc`) is imported lazily, in `run`, through
`vz_runtime` (which also owns the serial queue). Configuration lives in `vz_config`, NSError mapping
in `vz_errors`.

Threading — why a private serial queue and not the main queue + run loop:
  A VZVirtualMachine must be driven only from the queue it was created with; its completion handlers
  and delegate calls arrive there too (reference §3.1, rule 5). With the main queue we would have to
  spin an NSRunLoop on the main thread, and every call from the control-socket thread would have to
  be posted to it (rule 6). We show no VZVirtualMachineView, so nothing needs AppKit or the main
  thread: we create the VM with `initWithConfiguration_queue_` on our own serial queue (as Code-Hex/vz
  does, §3.2 B). Every VM call is a block on that queue (`_call` from other threads, or straight from
  a handler that already runs there); the main thread only waits on an Event, so Python signal
  handlers keep running. Handlers never block the queue and never let an exception escape (`_guard`):
  an exception leaving a libdispatch callback aborts the process (rule 4).

Exit statuses: guest shut itself down or we stopped it → STOPPED; `virtualMachine:didStopWithError:`
→ GUEST_ERROR; VZ error code 6 anywhere → CAPACITY; bad bundle/configuration → CONFIG_ERROR; start
failure → START_FAILED; an unexpected exception in a handler → CRASHED.

Saved state (DESIGN §12): a bundle with State.save is restored into a fresh stopped VM, then resumed.
The file is single-use and deleted after any attempt; on failure the bundle cold-boots with a fresh
MachineIdentifier. `save_state` pauses, saves, then stops the VM (the disk must stay as saved), so
`run` returns STOPPED soon after it succeeds.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import traceback
from collections.abc import Callable
from typing import Any

from shoes_vz.core.errors import BundleError
from shoes_vz.vm.drivers.base import Driver, DriverEvents
from shoes_vz.vm.drivers.vz_config import (
    MIN_MACOS,
    LaunchSpec,
    build_configuration,
    check_save_restore,
    file_url,
    host_macos,
)
from shoes_vz.vm.drivers.vz_errors import VZDriverError, config_error, from_nserror
from shoes_vz.vm.drivers.vz_runtime import QUEUE_TIMEOUT, SerialQueue, import_pyobjc
from shoes_vz.vm.exit_status import VMExit

SAVE_TIMEOUT = 600.0    # pause + save of a large guest's memory


@functools.cache
def delegate_class(foundation: Any, objc: Any) -> Any:
    """The VZVirtualMachineDelegate class (made once per process: ObjC class names are global)."""

    class ShoesVZMachineDelegate(foundation.NSObject,  # type: ignore[misc,call-arg]
                                 protocols=[objc.protocolNamed("VZVirtualMachineDelegate")]):
        # `sink` (the VZDriver) is set right after `new()`; PyObjC never calls __init__.
        def guestDidStopVirtualMachine_(self, vm: Any) -> None:
            self.sink.on_delegate("guest-stopped", vm, None)

        def virtualMachine_didStopWithError_(self, vm: Any, error: Any) -> None:
            self.sink.on_delegate("stopped-with-error", vm, error)

        def virtualMachine_networkDevice_attachmentWasDisconnectedWithError_(
                self, vm: Any, device: Any, error: Any) -> None:
            self.sink.on_delegate("network-disconnected", vm, error)

    return ShoesVZMachineDelegate


class VZDriver(Driver):
    name = "vz"
    min_macos = MIN_MACOS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._exit = VMExit.STOPPED
        self._error: str | None = None
        self._phase = "new"          # new, starting, restoring, running, saving, stopping, stopped
        self._stop_requested = False
        self._events: DriverEvents | None = None
        self._vz: Any = None
        self._foundation: Any = None
        self._objc: Any = None
        self._queue: SerialQueue | None = None
        self._spec: LaunchSpec | None = None
        self._host = (0, 0)
        # Strong references for the VM's whole life: the delegate property is weak (rule 7) and the
        # configuration and VM must outlive every block that mentions them.
        self._vm: Any = None
        self._cfg: Any = None
        self._delegate: Any = None
        self._retired: list[Any] = []

    # -- Driver -----------------------------------------------------------------------------------
    def run(self, events: DriverEvents) -> VMExit:
        self._events = events
        try:
            self._boot()
        except VZDriverError as e:
            self._finish(e.exit, str(e))
        while not self._done.wait(0.5):  # short waits: the main thread must keep taking signals
            pass
        if self._error:
            events.log(self._error)
        return self._exit

    def request_stop(self) -> None:
        with self._lock:
            self._stop_requested = True
        if self._done.is_set() or self._vm is None:
            return  # not started yet: _start_on_queue sees the flag
        try:
            asked = bool(self._call(self._ask_guest_to_stop))
        except VZDriverError as e:
            self._log(str(e))
            asked = False
        if not asked:
            self.force_stop()
            return
        threading.Thread(target=self._stop_after_grace, name="vz-stop-grace", daemon=True).start()

    def force_stop(self) -> None:
        with self._lock:
            self._stop_requested = True
        if self._done.is_set() or self._vm is None:
            return
        try:
            self._call(self._stop_on_queue)
        except VZDriverError as e:
            self._finish(VMExit.CRASHED, f"could not stop the VM: {e}")

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

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self._phase, "driver": self.name}
        if self._done.is_set():
            out["exit"] = self._exit.name.lower()
        if self._error:
            out["error"] = self._error
        if self._vm is not None and not self._done.is_set():
            with contextlib.suppress(VZDriverError):
                out["vm_state"] = self._call(lambda: self._state_name(self._vm.state()), timeout=2.0)
        return out

    # -- queue plumbing ---------------------------------------------------------------------------
    def _guard(self, fn: Callable[..., Any], what: str) -> Callable[..., None]:
        """`fn` made safe for a block/handler: nothing escapes; a bug ends the VM as CRASHED."""

        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except VZDriverError as e:
                self._finish(e.exit, str(e))
            except BaseException:  # never into libdispatch
                self._finish(VMExit.CRASHED, f"bug in the vz driver ({what}):\n{traceback.format_exc()}")

        return guarded

    def _async(self, fn: Callable[[], Any], what: str = "queued block") -> None:
        assert self._queue is not None
        self._queue.submit(self._guard(fn, what))

    def _call(self, fn: Callable[[], Any], timeout: float = QUEUE_TIMEOUT) -> Any:
        """Run `fn` on the VM queue from another thread and return its result (never from the queue)."""
        assert self._queue is not None
        return self._queue.call(fn, timeout)

    # -- boot (main thread, then the queue) -------------------------------------------------------
    def _boot(self) -> None:
        self._vz, self._foundation, dispatch, self._objc = import_pyobjc()
        self._host = host_macos()
        if self._host < MIN_MACOS:
            raise config_error(f"the vz driver needs macOS {MIN_MACOS[0]}.{MIN_MACOS[1]} or later "
                               f"(this host: {self._host[0]}.{self._host[1]})")
        if not self._vz.VZVirtualMachine.isSupported():
            raise config_error("this host cannot run VMs (VZVirtualMachine.isSupported() is false: no "
                               "hardware virtualization, e.g. inside a VM)")
        try:
            self._spec = LaunchSpec.from_metadata(self.bundle.read_metadata())
        except BundleError as e:
            raise config_error(str(e)) from None
        self._queue = SerialQueue(dispatch, f"shoes-vz.vm.{self.bundle.runner_id}")
        restoring = self.bundle.saved_state.exists()
        cfg = self._build(fresh_identity=False)
        self._call(lambda: self._new_vm(cfg))
        self._async(self._restore_on_queue if restoring else self._start_on_queue, "boot")

    def _build(self, *, fresh_identity: bool) -> Any:
        assert self._spec is not None
        return build_configuration(self._vz, self._foundation, self.bundle, self._spec, host=self._host,
                                   fresh_identity=fresh_identity)

    def _new_vm(self, cfg: Any) -> None:
        """On the queue: a VM for `cfg` with our delegate (the old VM, if any, is kept alive)."""
        if self._vm is not None:
            self._retired.append((self._vm, self._delegate))
        assert self._queue is not None
        vm = self._vz.VZVirtualMachine.alloc().initWithConfiguration_queue_(cfg, self._queue.queue)
        delegate = delegate_class(self._foundation, self._objc).new()
        delegate.sink = self
        vm.setDelegate_(delegate)
        self._vm, self._cfg, self._delegate = vm, cfg, delegate

    def _start_on_queue(self) -> None:
        if self._stop_requested:
            self._finish(VMExit.STOPPED, None)
            return
        self._phase = "starting"
        vm = self._vm
        vm.startWithCompletionHandler_(self._guard(lambda err: self._started(vm, err), "start handler"))

    def _started(self, vm: Any, err: Any) -> None:
        if vm is not self._vm:
            return
        if err is not None:
            e = from_nserror(err, "start the VM", default_exit=VMExit.START_FAILED)
            self._finish(e.exit, str(e))
            return
        self._running()

    def _running(self) -> None:
        self._phase = "running"
        if self._events is not None:
            self._events.started()
        if self._stop_requested:  # a stop arrived while starting: the guest has nothing to lose yet
            self._stop_on_queue()

    def _restore_on_queue(self) -> None:
        self._phase = "restoring"
        vm = self._vm
        url = file_url(self._foundation, self.bundle.saved_state)
        vm.restoreMachineStateFromURL_completionHandler_(
            url, self._guard(lambda err: self._restored(vm, err), "restore handler"))

    def _restored(self, vm: Any, err: Any) -> None:
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
        if err is None:
            self._log("restored State.save and resumed the guest (warm start)")
            self._record_restore(True, "")
            self._running()
            return
        reason = str(from_nserror(err, "resume the restored VM", default_exit=VMExit.START_FAILED))
        vm.stopWithCompletionHandler_(self._guard(lambda _e: self._cold_boot_after(reason), "stop handler"))

    def _cold_boot_after(self, reason: str) -> None:
        """On the queue: forget the saved state, take a fresh identity (DESIGN §12), boot cold."""
        self._log(f"{reason}; deleted State.save, cold-booting with a fresh MachineIdentifier")
        self._record_restore(False, reason)
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

    # -- stop ---------------------------------------------------------------------------------------
    def _ask_guest_to_stop(self) -> bool:
        vm = self._vm
        if vm.state() != self._vz.VZVirtualMachineStateRunning or not vm.canRequestStop():
            return False
        ok, err = vm.requestStopWithError_(None)
        if not ok:
            self._log(str(from_nserror(err, "ask the guest to stop", default_exit=VMExit.STOPPED)))
        return bool(ok)

    def _stop_after_grace(self) -> None:
        if not self._done.wait(self.options.stop_grace):
            self._log(f"the guest did not stop within {self.options.stop_grace:g}s; stopping it")
            self.force_stop()

    def _stop_on_queue(self) -> None:
        vm = self._vm
        state = vm.state()
        if state in (self._vz.VZVirtualMachineStateStopped, self._vz.VZVirtualMachineStateError):
            self._finish(VMExit.STOPPED, None)
        elif vm.canStop():
            self._phase = "stopping"
            vm.stopWithCompletionHandler_(self._guard(lambda err: self._stopped(vm, err), "stop handler"))
        # else starting/restoring/saving: that handler sees _stop_requested and stops then

    def _stopped(self, vm: Any, err: Any) -> None:
        if vm is not self._vm:
            return
        if err is not None:
            e = from_nserror(err, "stop the VM", default_exit=VMExit.GUEST_ERROR)
            self._finish(VMExit.GUEST_ERROR, str(e))
        else:
            self._finish(VMExit.STOPPED, None)

    # -- save (warm path) ---------------------------------------------------------------------------
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

    # -- delegate (on the queue) --------------------------------------------------------------------
    def on_delegate(self, event: str, vm: Any, error: Any) -> None:
        """Called by the delegate; guarded here because it runs inside a libdispatch callback."""
        self._guard(self._delegate_event, f"delegate {event}")(event, vm, error)

    def _delegate_event(self, event: str, vm: Any, error: Any) -> None:
        if vm is not self._vm:
            return  # a retired VM (e.g. after a failed restore)
        if event == "guest-stopped":
            self._log("the guest shut down")
            self._finish(VMExit.STOPPED, None)
        elif event == "stopped-with-error":
            e = from_nserror(error, "keep the VM running", default_exit=VMExit.GUEST_ERROR)
            self._finish(VMExit.GUEST_ERROR, f"the VM stopped with an error: {e}")
        elif event == "network-disconnected":  # happens on guest reboots; informational
            self._log("the VM's network attachment was disconnected"
                      + (f": {from_nserror(error, 'keep the network', default_exit=VMExit.STOPPED)}"
                         if error is not None else ""))

    # -- helpers ------------------------------------------------------------------------------------
    def _finish(self, exit: VMExit, error: str | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._exit, self._error, self._phase = exit, error, "stopped"
            self._done.set()

    def _set_phase(self, phase: str) -> None:
        self._phase = phase

    def _log(self, message: str) -> None:
        if self._events is not None:
            self._events.log(message)

    def _state_name(self, state: int) -> str:
        vz = self._vz
        names = {vz.VZVirtualMachineStateStopped: "stopped", vz.VZVirtualMachineStateRunning: "running",
                 vz.VZVirtualMachineStatePaused: "paused", vz.VZVirtualMachineStateError: "error",
                 vz.VZVirtualMachineStateStarting: "starting", vz.VZVirtualMachineStatePausing: "pausing",
                 vz.VZVirtualMachineStateResuming: "resuming", vz.VZVirtualMachineStateStopping: "stopping",
                 vz.VZVirtualMachineStateSaving: "saving", vz.VZVirtualMachineStateRestoring: "restoring"}
        return names.get(state, f"state {state}")


__all__ = ["MIN_MACOS", "VZDriver"]
