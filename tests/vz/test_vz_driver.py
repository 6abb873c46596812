"""The vz driver's life cycle against the generated fake: start, stop, delegate, save, restore."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest
from fakevz import FakeVZ
from vzharness import make_bundle, start

from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers.vz_errors import VZDriverError
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.identity_files import read_data_representation


def wait_for(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_start_and_guest_shutdown(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle)
    h.wait_started()
    assert h.driver.status()["vm_state"] == "running"
    gc.collect()  # the VM holds its delegate weakly: ours must survive on our strong reference
    fake_vz.guest_shutdown(fake_vz.vms[0])
    assert h.result() is VMExit.STOPPED
    assert fake_vz.lost_delegate_calls == []
    assert h.events.started_count == 1
    assert "the guest shut down" in h.events.messages


def test_guest_error_is_guest_error(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle)
    h.wait_started()
    fake_vz.guest_crash(fake_vz.vms[0], code=1, text="An internal error occurred.")
    assert h.result() is VMExit.GUEST_ERROR
    assert "VZErrorInternal" in h.driver.status()["error"]


def test_request_stop_honoured(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle, stop_grace=5)
    h.wait_started()
    t0 = time.monotonic()
    h.driver.request_stop()
    assert h.result() is VMExit.STOPPED
    assert time.monotonic() - t0 < 2  # the guest obeyed; no grace wait


def test_request_stop_ignored_then_forced(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.guest_honours_stop_request = False  # macOS guests may just show a dialog
    h = start(bundle, stop_grace=0.2)
    h.wait_started()
    h.driver.request_stop()
    assert h.result() is VMExit.STOPPED
    assert any("did not stop within" in m for m in h.events.messages)


def test_force_stop(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle)
    h.wait_started()
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED
    assert h.driver.status()["state"] == "stopped"


def test_stop_while_starting(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.start_delay = 0.3
    h = start(bundle)
    wait_for(lambda: h.driver.status()["state"] == "starting")
    h.driver.request_stop()
    assert h.result() is VMExit.STOPPED


@pytest.mark.parametrize(
    ("error", "exit", "words"),
    [
        (("VZErrorDomain", 6, "The number of virtual machines exceeds the limit."), VMExit.CAPACITY,
         "VZErrorVirtualMachineLimitExceeded"),
        (("VZErrorDomain", 8, "Out of disk space."), VMExit.START_FAILED, "VZErrorOutOfDiskSpace"),
        (("VZErrorDomain", 1, "Internal error."), VMExit.START_FAILED, "VZErrorInternal"),
        (("NSPOSIXErrorDomain", 1, "Operation not permitted"), VMExit.START_FAILED, "NSPOSIXErrorDomain code 1"),
    ],
)
def test_start_errors(fake_vz: FakeVZ, bundle: Bundle, error: tuple[str, int, str], exit: VMExit,
                      words: str) -> None:
    fake_vz.knobs.start_error = error
    h = start(bundle)
    assert h.result() is exit
    assert words in h.events.messages[-1]
    assert h.events.started_count == 0


def test_third_vm_is_refused_for_capacity(fake_vz: FakeVZ, tmp_path: Path) -> None:
    runs = [start(make_bundle(tmp_path, name=f"r{i}")) for i in range(2)]
    for h in runs:
        h.wait_started()
    third = start(make_bundle(tmp_path, name="r3"))
    assert third.result() is VMExit.CAPACITY
    assert "Apple allows 2" in third.events.messages[-1]
    for h in runs:
        h.driver.force_stop()
        assert h.result() is VMExit.STOPPED


def test_config_error_exits_before_any_vm(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.entitlement = False
    h = start(bundle)
    assert h.result() is VMExit.CONFIG_ERROR
    assert fake_vz.vms == []
    assert "com.apple.security.virtualization" in h.events.messages[-1]


def test_host_too_old_or_unsupported(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.host = (13, 6)
    assert start(bundle).result() is VMExit.CONFIG_ERROR
    fake_vz.knobs.host, fake_vz.knobs.vz_supported = (26, 5), False
    h = start(bundle)
    assert h.result() is VMExit.CONFIG_ERROR
    assert "isSupported" in h.events.messages[-1]


def save_then_stop(fake_vz: FakeVZ, bundle: Bundle) -> bytes | None:
    h = start(bundle)
    h.wait_started()
    h.driver.save_state()
    assert bundle.saved_state.exists()
    assert h.result() is VMExit.STOPPED  # saving stops the VM: the disk must stay as saved
    return read_data_representation(bundle.machine_identifier)


def test_save_then_restore(fake_vz: FakeVZ, bundle: Bundle) -> None:
    ident = save_then_stop(fake_vz, bundle)
    h = start(bundle)
    h.wait_started()
    assert not bundle.saved_state.exists()  # single-use
    assert read_data_representation(bundle.machine_identifier) == ident  # same identity restored
    assert bundle.read_metadata()["restored"] is True  # the agent reports the warm start
    assert len(fake_vz.vms) == 2 and fake_vz.vms[1]._started_once
    assert h.driver.status()["vm_state"] == "running"
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


@pytest.mark.parametrize("how", ["error", "mismatch", "garbage", "resume"])
def test_restore_failure_deletes_state_and_cold_boots(fake_vz: FakeVZ, bundle: Bundle, how: str) -> None:
    ident = save_then_stop(fake_vz, bundle)
    if how == "error":
        fake_vz.knobs.restore_error = ("VZErrorDomain", 12, "The virtual machine failed to restore with "
                                                            "error “permission denied”.")
    elif how == "mismatch":  # a different MAC: the configuration no longer matches the save
        meta = bundle.read_metadata()
        bundle.update_metadata(**{**meta, "mac_address": "5a:0b:03:4c:5d:6f"})
    elif how == "garbage":
        bundle.saved_state.write_bytes(b"not a save file")
    else:
        fake_vz.knobs.resume_error = ("VZErrorDomain", 1, "Internal error.")
    h = start(bundle)
    h.wait_started()
    if how == "resume":
        fake_vz.knobs.resume_error = None
    assert not bundle.saved_state.exists()
    assert read_data_representation(bundle.machine_identifier) != ident  # fresh identity (DESIGN §12)
    assert any("cold-booting" in m for m in h.events.messages)
    meta = bundle.read_metadata()
    assert meta["restored"] is False and meta["restore_error"]
    assert h.events.started_count == 1
    h.driver.request_stop()
    assert h.result() is VMExit.STOPPED


def test_restore_capacity_is_capacity(fake_vz: FakeVZ, bundle: Bundle) -> None:
    save_then_stop(fake_vz, bundle)
    fake_vz.knobs.max_vms = 0
    h = start(bundle)
    assert h.result() is VMExit.CAPACITY
    assert not bundle.saved_state.exists()


def test_save_failure_keeps_the_vm_running(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.save_error = ("VZErrorDomain", 11, "The virtual machine failed to save.")
    h = start(bundle)
    h.wait_started()
    with pytest.raises(VZDriverError, match="VZErrorSave"):
        h.driver.save_state()
    assert not bundle.saved_state.exists()
    wait_for(lambda: h.driver.status().get("vm_state") == "running")
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_save_refused_when_configuration_cannot_be_saved(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.save_restore_supported = False
    h = start(bundle)
    h.wait_started()
    with pytest.raises(VZDriverError, match="VZErrorNotSupported"):
        h.driver.save_state()
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_handler_bug_is_crashed_not_a_process_abort(fake_vz: FakeVZ, bundle: Bundle,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from shoes_vz.vm.drivers.vz import VZDriver

    def boom(self: VZDriver) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(VZDriver, "_running", boom)
    h = start(bundle)
    assert h.result() is VMExit.CRASHED
    assert "bug in the vz driver" in h.events.messages[-1]
