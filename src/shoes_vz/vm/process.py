"""`shoes-vz vm run BUNDLE`: the process that owns exactly one VM.

It holds the bundle lock and one host-wide VM slot (`host_slots`) for its whole life (and the
template's use lock it inherits from the agent, template/use_lock.py), serves the control socket,
records the instant the VM started (boot_to_ssh counts from it) and exits with a `VMExit` status the
agent maps to a runner state; when a driver gives up it records why (`exit_reason` in
RuntimeMetadata.json) — the driver's last words, which the agent puts in the runner's error. The
agent starts it in its own session, so an agent crash leaves it running.

Capacity, told apart by the host slots held at that moment: no free slot → CAPACITY (the host runs
its limit; retried later); the framework refusing for capacity although we hold a slot → HOST_QUOTA
(fewer VMs than the limit run by our count: a VM outside shoes-vz or a leaked quota — the host
needs attention).

The process ends with `os._exit` after flushing (`exit_now`): the vz driver's VM lives on a
libdispatch queue whose threads may still deliver a late handler or delegate call (a network
disconnect after the stop, say) into Python while the interpreter finalizes, which can crash it and
turn STOPPED into a status the agent misreads. Nothing is left to finalize by then: the control
socket is closed, the bundle lock and the host slot are released, every file is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import BundleError, CapacityExhausted, DriverError
from shoes_vz.core.host_defaults import DEFAULTS, HOST_VM_LIMIT, vm_slots_dir
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.control import ControlServer
from shoes_vz.vm.drivers import DRIVERS, Driver, DriverOptions, driver_class
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.host_slots import HostSlots

log = logging.getLogger("shoes_vz.vm")


class _Events:
    def __init__(self, bundle: Bundle, driver_name: str) -> None:
        self.bundle = bundle
        self.driver_name = driver_name
        self.started_at: float | None = None

    def started(self) -> None:
        self.started_at = time.time()
        self.bundle.update_metadata(started_at=self.started_at, pid=os.getpid(), driver=self.driver_name)
        log.info("vm started")

    def log(self, message: str) -> None:
        log.info("%s", message)


def _control_handler(driver: Driver, stop_grace: float) -> Any:
    def handle(command: str, req: dict[str, Any]) -> dict[str, Any]:
        if command == "status":
            return driver.status()
        if command == "stop":
            driver.request_stop()

            def _hard() -> None:
                time.sleep(stop_grace)
                driver.force_stop()

            threading.Thread(target=_hard, daemon=True).start()
            return {"stopping": True}
        if command == "force-stop":
            driver.force_stop()
            return {"stopping": True}
        if command == "save":
            driver.save_state()
            return {"saved": str(driver.bundle.saved_state)}
        if command == "channel":
            return {"answer": _exchange(driver, req)}
        if command == "cold-boot":
            driver.cold_boot(str(req.get("reason", "asked to"))[:500])
            return {"cold_boot": True}
        raise ValueError(command)

    return handle


def _exchange(driver: Driver, req: dict[str, Any]) -> str:
    """The agent's `channel` request: its line to the guest, the guest's line back (both text)."""
    line, timeout = req.get("line"), req.get("io_timeout", 5.0)
    if not isinstance(line, str) or isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= 60:
        raise ValueError("channel: wants a `line` and an `io_timeout` in (0, 60] seconds")
    return driver.channel(line.encode(), float(timeout)).decode(errors="replace")


def run(bundle_path: Path, driver_name: str, options: DriverOptions, slots: HostSlots) -> VMExit:
    bundle = Bundle(bundle_path)
    if not bundle.path.is_dir():
        log.error("bundle %s does not exist", bundle.path)
        return VMExit.CONFIG_ERROR
    try:
        lock = bundle.hold_lock()
        lock.__enter__()
    except BundleError as e:
        log.error("%s", e)
        return VMExit.LOCKED
    try:
        try:
            held = slots.take(f"vm run {bundle.path}")
        except CapacityExhausted as e:
            log.error("capacity: %s", e)
            return VMExit.CAPACITY
        except OSError as e:
            log.error("cannot take a host VM slot in %s: %s", slots.directory, e)
            return VMExit.CONFIG_ERROR
        with held:
            status = _run_driver(bundle, driver_name, options)
            return _framework_refused(slots) if status is VMExit.CAPACITY else status
    finally:
        lock.__exit__(None, None, None)


def _run_driver(bundle: Bundle, driver_name: str, options: DriverOptions) -> VMExit:
    control: ControlServer | None = None
    try:
        driver = driver_class(driver_name)(bundle, options)
        control = ControlServer(bundle.control_socket, _control_handler(driver, options.stop_grace))
        control.start()
        # SIGTERM/SIGINT mean "shut the guest down"; a second one means "now"
        hits = {"n": 0}

        def _on_signal(signum: int, _frame: Any) -> None:
            hits["n"] += 1
            log.info("signal %d: %s", signum, "stopping" if hits["n"] == 1 else "forcing stop")
            (driver.request_stop if hits["n"] == 1 else driver.force_stop)()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        status = driver.run(_Events(bundle, driver_name))
        log.info("vm exited: %s", status.name)
        return status
    except DriverError as e:
        log.error("driver error: %s", e)
        _last_words(bundle, str(e))
        return VMExit.CAPACITY if e.capacity else VMExit.START_FAILED
    except Exception as e:
        _last_words(bundle, f"the vm process crashed: {type(e).__name__}: {e}")
        raise
    finally:
        if control is not None:
            control.close()


def _framework_refused(slots: HostSlots) -> VMExit:
    """The framework said "limit exceeded" although we hold a host slot: count who holds the others."""
    held = slots.holders()
    log.error(
        "host quota: the framework refused a VM for capacity although only %d other VMs hold host VM slots "
        "(limit %d; held: %s). A VM runs outside shoes-vz (tart, UTM, another user), host_vm_limit is above what "
        "the framework allows (Apple: 2), or the host leaked its VM quota after guest shutdowns (only a reboot "
        "clears that). This host needs attention.",
        max(len(held) - 1, 0), slots.limit, ", ".join(h.describe() for h in held) or "none readable")
    return VMExit.HOST_QUOTA


def preflight(driver_name: str) -> list[str]:
    """What stops `driver_name` from running VMs on this host (each with its fix); [] when nothing."""
    return driver_class(driver_name).preflight()


def sweep_sim_network(lease_file: Path, log: Callable[[str], None]) -> None:
    """Remove what a dead holder left of the sim network of `lease_file` (its bridge waits for the next VM,
    which a stopped `LocalStack` never starts). Here: only this module imports the drivers."""
    from shoes_vz.vm.drivers.sim_net import SimNetwork
    from shoes_vz.vm.drivers.sim_options import SimOptions

    SimNetwork(lease_file, SimOptions()).sweep_if_dead(log)


def _last_words(bundle: Bundle, reason: str) -> None:
    """Why the VM process gives up, for the agent to put in the runner's error (`exit_reason`)."""
    try:
        bundle.update_metadata(exit_reason=reason)
    except OSError as e:
        log.error("cannot record the exit reason in %s: %s", bundle.runtime_metadata, e)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shoes-vz vm run", description=__doc__)
    p.add_argument("bundle", type=Path, nargs="?")
    p.add_argument("--driver", choices=sorted(DRIVERS), default="sim")
    p.add_argument("--boot-delay", type=float, default=0.0)
    p.add_argument("--restore-delay", type=float, default=0.0)
    p.add_argument("--lease-file", type=Path, default=None)
    p.add_argument("--stop-grace", type=float, default=10.0)
    p.add_argument("--restore-timeout", type=float, default=DriverOptions.restore_timeout,
                   help="vz: a restore (and resume) that takes longer falls back to a cold boot")
    p.add_argument("--live-timeout", type=float, default=DriverOptions.live_timeout,
                   help="vz: a restored guest that shows no life this long is cold-booted instead (0: no check)")
    p.add_argument("--host-slots", type=Path, default=vm_slots_dir(DEFAULTS.state_dir),
                   help="the host-wide VM slot locks (the agent's <state_dir>/vm-slots)")
    p.add_argument("--host-limit", type=int, default=HOST_VM_LIMIT, help="VMs this host may run at once")
    p.add_argument("--driver-options", type=_json_object, default={},
                   help="the driver's own options as a JSON object (the agent's driver_options)")
    p.add_argument("--describe", action="store_true", help="say what a VM of this driver is here, and exit")
    a = p.parse_args(argv)
    if a.describe:
        try:
            print(driver_class(a.driver).describe(DriverOptions(extra=a.driver_options)))
        except DriverError as e:
            print(f"{a.driver}: {e}", file=sys.stderr)
            return int(VMExit.CONFIG_ERROR)
        return 0
    if a.bundle is None:
        p.error("a bundle is required")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s vm[%(process)d] %(levelname)s %(message)s"
    )
    opts = DriverOptions(boot_delay=a.boot_delay, restore_delay=a.restore_delay, lease_file=a.lease_file,
                         stop_grace=a.stop_grace, restore_timeout=a.restore_timeout, live_timeout=a.live_timeout,
                         extra=a.driver_options)
    try:
        return int(run(a.bundle, a.driver, opts, HostSlots(a.host_slots, a.host_limit)))
    except Exception:
        log.exception("vm process crashed")
        return int(VMExit.CRASHED)


def exit_now(status: int) -> None:
    """Flush, then end the process without interpreter finalization (see the module docstring)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
