"""`shoes-vz vm run BUNDLE`: the process that owns exactly one VM.

It holds the bundle lock for its whole life, serves the control socket, records the instant the
VM started (boot_to_ssh counts from it) and exits with a `VMExit` status the agent maps to a
runner state. The agent starts it in its own session, so an agent crash leaves it running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import BundleError, DriverError
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.control import ControlServer
from shoes_vz.vm.drivers import DRIVERS, Driver, DriverOptions, driver_class
from shoes_vz.vm.exit_status import VMExit

log = logging.getLogger("shoes_vz.vm")


class _Events:
    def __init__(self, bundle: Bundle, driver_name: str) -> None:
        self.bundle = bundle
        self.driver_name = driver_name
        self.started_at: float | None = None

    def started(self) -> None:
        import os

        self.started_at = time.time()
        self.bundle.update_metadata(started_at=self.started_at, pid=os.getpid(), driver=self.driver_name)
        log.info("vm started")

    def log(self, message: str) -> None:
        log.info("%s", message)


def _control_handler(driver: Driver, stop_grace: float) -> Any:
    def handle(command: str) -> dict[str, Any]:
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
        raise ValueError(command)

    return handle


def run(bundle_path: Path, driver_name: str, options: DriverOptions) -> VMExit:
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
        with contextlib.suppress(BundleError, OSError):
            bundle.update_metadata(driver_error=str(e))  # the agent names it when the runner fails
        return VMExit.CAPACITY if e.capacity else VMExit.START_FAILED
    finally:
        if control is not None:
            control.close()
        lock.__exit__(None, None, None)


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
                         stop_grace=a.stop_grace, extra=a.driver_options)
    try:
        return int(run(a.bundle, a.driver, opts))
    except Exception:
        log.exception("vm process crashed")
        return int(VMExit.CRASHED)


if __name__ == "__main__":
    sys.exit(main())
