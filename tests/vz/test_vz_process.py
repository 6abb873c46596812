"""`vm run` around the vz driver (on the generated fake): the host VM slot it holds, the two capacity
failures told apart, and an exit that leaves no interpreter finalization to late dispatch callbacks."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakevz import FakeVZ

from shoes_vz.vm import process
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers.base import DriverOptions
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.host_slots import HostSlots


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_framework_refusal_while_a_slot_was_free_is_host_quota(fake_vz: FakeVZ, bundle: Bundle, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake_vz.knobs.max_vms = 0  # code 6 although shoes-vz runs nothing else: a leaked quota, or a VM not ours
    slots = HostSlots(tmp_path / "vm-slots", 2)
    with caplog.at_level(logging.INFO, "shoes_vz.vm"):
        status = process.run(bundle.path, "vz", DriverOptions(stop_grace=0.2), slots)
    assert status is VMExit.HOST_QUOTA and status.is_capacity
    text = caplog.text
    assert "VZErrorVirtualMachineLimitExceeded" in text
    assert "host quota: the framework refused a VM for capacity although only 0 other VMs hold host VM slots " \
           "(limit 2" in text
    assert f"vm run {bundle.path}" in text and "This host needs attention" in text
    assert slots.holders() == [], "the slot went with the VM"


def test_no_free_slot_is_capacity_and_no_vm_is_made(fake_vz: FakeVZ, bundle: Bundle, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    slots = HostSlots(tmp_path / "vm-slots", 1)
    with slots.take("template create macos-26"), caplog.at_level(logging.INFO, "shoes_vz.vm"):
        status = process.run(bundle.path, "vz", DriverOptions(), slots)
    assert status is VMExit.CAPACITY
    assert fake_vz.vms == []
    assert "capacity: all 1 host VM slots are held" in caplog.text and "template create macos-26" in caplog.text


def test_a_vm_holds_its_slot_while_it_runs(fake_vz: FakeVZ, bundle: Bundle, tmp_path: Path) -> None:
    slots = HostSlots(tmp_path / "vm-slots", 2)
    fake_vz.knobs.guest_stops_after = 0.3
    seen: list[list[str]] = []
    original = fake_vz.behaviour[("VZVirtualMachine", "startWithCompletionHandler:")]

    def start(fake: FakeVZ, vm: object, handler: object) -> None:
        seen.append([h.what for h in slots.holders()])
        original(fake, vm, handler)

    fake_vz.behaviour[("VZVirtualMachine", "startWithCompletionHandler:")] = start
    assert process.run(bundle.path, "vz", DriverOptions(), slots) is VMExit.STOPPED
    assert seen == [[f"vm run {bundle.path}"]]
    assert slots.holders() == []


def test_exit_now_flushes_and_skips_finalization(tmp_path: Path) -> None:
    # a dispatch-like thread keeps calling into Python; interpreter shutdown would run atexit hooks and
    # finalize modules under it — exit_now must end the process with the status, the log written
    script = textwrap.dedent("""
        import atexit, logging, sys, threading, time
        from shoes_vz.vm import process
        logging.basicConfig(stream=sys.stderr, level=logging.INFO)
        atexit.register(lambda: print("FINALIZED", file=sys.stderr, flush=True))
        def callbacks():
            while True:
                time.sleep(0.001)
        threading.Thread(target=callbacks, daemon=True).start()
        logging.getLogger("shoes_vz.vm").info("vm exited: STOPPED")
        sys.stdout.write("unflushed stdout")
        process.exit_now(14)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 14
    assert "vm exited: STOPPED" in done.stderr and done.stdout == "unflushed stdout"
    assert "FINALIZED" not in done.stderr
