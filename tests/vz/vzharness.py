"""Helpers for the vz driver tests: a runner bundle on disk and a driver running in a thread."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakevz import fake_hardware_model_data

from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers import vz as vz_driver
from shoes_vz.vm.drivers.base import DriverOptions
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.identity_files import new_machine_identifier_file, write_data_representation

MAC = "5a:0b:03:4c:5d:6e"


def make_bundle(root: Path, *, name: str = "r1", cpu: int = 4, memory: int = 8 << 30,
                **extra: Any) -> Bundle:
    bundle = Bundle.for_runner(root, name)
    bundle.path.mkdir(parents=True)
    with bundle.disk.open("wb") as f:
        f.truncate(1 << 20)
    bundle.aux_storage.write_bytes(b"\0" * 4096)
    write_data_representation(bundle.hardware_model, fake_hardware_model_data())
    new_machine_identifier_file(bundle.machine_identifier)
    meta = {"mac_address": MAC, "cpu_count": cpu, "memory_bytes": memory, "template": "macos-26"}
    meta.update(extra)
    bundle.runtime_metadata.write_text(json.dumps(meta))
    return bundle


@dataclass
class Events:
    started_count: int = 0
    messages: list[str] = field(default_factory=list)
    started_event: threading.Event = field(default_factory=threading.Event)

    def started(self) -> None:
        self.started_count += 1
        self.started_event.set()

    def log(self, message: str) -> None:
        self.messages.append(message)


@dataclass
class Harness:
    driver: vz_driver.VZDriver
    events: Events
    thread: threading.Thread
    box: dict[str, Any]

    def wait_started(self, timeout: float = 5.0) -> None:
        assert self.events.started_event.wait(timeout), f"never started: {self.driver.status()}"

    def result(self, timeout: float = 5.0) -> VMExit:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run() did not return: {self.driver.status()}"
        if "error" in self.box:
            raise self.box["error"]
        result: VMExit = self.box["exit"]
        return result


def start(bundle: Bundle, *, stop_grace: float = 0.3, restore_timeout: float = 5.0, live_timeout: float = 5.0,
          **extra: Any) -> Harness:
    options = DriverOptions(stop_grace=stop_grace, restore_timeout=restore_timeout, live_timeout=live_timeout,
                            extra=extra)
    driver = vz_driver.VZDriver(bundle, options)
    events = Events()
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["exit"] = driver.run(events)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=main, name="vz-run", daemon=True)
    thread.start()
    return Harness(driver, events, thread, box)
