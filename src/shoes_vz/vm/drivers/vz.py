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
or a network the VM keeps losing → GUEST_ERROR; VZ error code 6 anywhere → CAPACITY (which
`vm.process` tells apart by the host VM slots held); bad bundle/configuration, or running as root →
CONFIG_ERROR; start failure → START_FAILED; an unexpected exception in a handler → CRASHED.

Network: `attachmentWasDisconnectedWithError:` leaves the device without an attachment, so the
guest has no network and its runner would sit idle until the agent's deadlines (tart ends the VM on
it). A running VM gets a new NAT attachment on the spot; if that does not hold (another disconnect,
MAX_REATTACH times within REATTACH_WINDOW) or does not take, the VM ends as GUEST_ERROR and the agent
tears the runner down and reports it.

Saved state (DESIGN §12, `vz_saved_state`): a bundle with State.save is restored into a fresh stopped
VM, resumed and checked for life, each step under a deadline; on any failure the bundle cold-boots
with a fresh MachineIdentifier. A VM that is to be saved (a warm-slot build) or restored is checked
with `validateSaveRestoreSupportWithError_` before it is made. `save_state` pauses, saves, then stops
the VM (the disk must stay as saved), so `run` returns STOPPED soon after it succeeds.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from shoes_vz.core.errors import BundleError
from shoes_vz.vm.drivers.base import Driver, DriverEvents
from shoes_vz.vm.drivers.vz_channel import ChannelMixin
from shoes_vz.vm.drivers.vz_config import MIN_MACOS, LaunchSpec, build_configuration, check_save_restore
from shoes_vz.vm.drivers.vz_errors import VZDriverError, config_error, from_nserror
from shoes_vz.vm.drivers.vz_host import host_macos, refuse_root
from shoes_vz.vm.drivers.vz_runtime import QUEUE_TIMEOUT, SerialQueue, import_pyobjc
from shoes_vz.vm.drivers.vz_saved_state import SavedStateMixin
from shoes_vz.vm.exit_status import VMExit

MAX_REATTACH, REATTACH_WINDOW = 3, 600.0  # new NAT attachments a VM may need before it counts as broken


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
            self.sink.on_delegate("network-disconnected", vm, error, device)

    return ShoesVZMachineDelegate


class VZDriver(ChannelMixin, SavedStateMixin, Driver):
    name = "vz"
    min_macos = MIN_MACOS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._exit = VMExit.STOPPED
        self._error: str | None = None
        # new, starting, restoring, checking (is the restored guest alive?), abandoning, running, saving,
        # stopping, stopped
        self._phase = "new"
        self._stop_requested = False
        self._events: DriverEvents | None = None
        self._vz: Any = None
        self._foundation: Any = None
        self._objc: Any = None
        self._queue: SerialQueue | None = None
        self._spec: LaunchSpec | None = None
        self._host = (0, 0)
        # Strong references for the VM's whole life: the delegate property is weak (rule 7) and the
        # configuration and VM must outlive every block that mentions them. A VM given up on (a failed
        # restore) is released before the next one starts.
        self._vm: Any = None
        self._cfg: Any = None
        self._delegate: Any = None
        self._attempt = 0  # which VM object a deadline belongs to
        self._reattached: list[float] = []

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
        refuse_root("the vz driver")
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
        problem = check_save_restore(cfg) if restoring or self._spec.saveable else None
        if problem is not None and self._spec.saveable:  # a warm-slot build: fail before booting for nothing
            raise config_error(f"this VM is to be saved as a warm slot, but {problem}: the template cannot "
                               "have warm slots with this device set on this host")
        if problem is not None:
            self._discard_saved_state()
            self._record_restore(False, str(problem))
            self._log(f"{problem}; deleted State.save, cold-booting with a fresh MachineIdentifier")
            restoring, cfg = False, self._build(fresh_identity=True)
        self._call(lambda: self._new_vm(cfg))
        self._async(self._restore_on_queue if restoring else self._start_on_queue, "boot")

    def _build(self, *, fresh_identity: bool) -> Any:
        assert self._spec is not None
        return build_configuration(self._vz, self._foundation, self.bundle, self._spec, host=self._host,
                                   fresh_identity=fresh_identity)

    def _new_vm(self, cfg: Any) -> None:
        """On the queue: a VM for `cfg` with our delegate (any previous one was released first)."""
        assert self._queue is not None and self._vm is None
        self._attempt += 1
        vm = self._vz.VZVirtualMachine.alloc().initWithConfiguration_queue_(cfg, self._queue.queue)
        delegate = delegate_class(self._foundation, self._objc).new()
        delegate.sink = self
        vm.setDelegate_(delegate)
        self._vm, self._cfg, self._delegate = vm, cfg, delegate

    def _release_vm(self) -> None:
        """On the queue: drop every reference to the current VM (its late calls reach no delegate)."""
        if self._vm is not None:
            self._vm.setDelegate_(None)
        self._vm = self._cfg = self._delegate = None

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

    # -- stop ---------------------------------------------------------------------------------------
    def _ask_guest_to_stop(self) -> bool:
        vm = self._vm
        if vm is None or vm.state() != self._vz.VZVirtualMachineStateRunning or not vm.canRequestStop():
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
        if vm is None or self._phase == "abandoning":
            return  # between a given-up restore and the cold boot, which sees _stop_requested
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

    # -- delegate (on the queue) --------------------------------------------------------------------
    def on_delegate(self, event: str, vm: Any, error: Any, device: Any = None) -> None:
        """Called by the delegate; guarded here because it runs inside a libdispatch callback."""
        self._guard(self._delegate_event, f"delegate {event}")(event, vm, error, device)

    def _delegate_event(self, event: str, vm: Any, error: Any, device: Any) -> None:
        if vm is not self._vm:
            return  # a released VM (e.g. after a failed restore)
        if event == "guest-stopped":
            self._log("the guest shut down")
            self._finish(VMExit.STOPPED, None)
        elif event == "stopped-with-error":
            e = from_nserror(error, "keep the VM running", default_exit=VMExit.GUEST_ERROR)
            self._finish(VMExit.GUEST_ERROR, f"the VM stopped with an error: {e}")
        elif event == "network-disconnected":
            self._network_lost(device, error)

    def _network_lost(self, device: Any, error: Any) -> None:
        why = (str(from_nserror(error, "keep the network", default_exit=VMExit.GUEST_ERROR)) if error is not None
               else "no error given")
        if self._phase != "running":  # starting, saving, stopping: the VM's own transition
            self._log(f"the VM's network attachment was disconnected while {self._phase} ({why})")
            return
        now = time.monotonic()
        self._reattached = [t for t in self._reattached if now - t < REATTACH_WINDOW]
        if len(self._reattached) >= MAX_REATTACH:
            self._finish(VMExit.GUEST_ERROR, f"the VM lost its network again ({why}) after {MAX_REATTACH} new NAT "
                         f"attachments within {REATTACH_WINDOW:g}s; ending it: without a network its runner "
                         "would sit idle")
            return
        device.setAttachment_(self._vz.VZNATNetworkDeviceAttachment.new())
        if device.attachment() is None:
            self._finish(VMExit.GUEST_ERROR, f"the VM lost its network ({why}) and a new NAT attachment did not "
                         "take; ending it: without a network its runner would sit idle")
            return
        self._reattached.append(now)
        self._log(f"the VM's network attachment was disconnected ({why}); attached a new NAT attachment")

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
