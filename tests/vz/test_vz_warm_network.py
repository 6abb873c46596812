"""What a real Mac does that the happy path hides, on the generated fake (issue 13): the saveable device
set checked before a boot, restores that hang or run no guest code, the VM object a failed restore
leaves behind, old save files, lost network attachments, root."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import pytest
from fakevz import FakeVZ
from vzharness import make_bundle, start

from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers import vz as vz_module
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.identity_files import read_data_representation


def wait_for(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def saved_slot(fake_vz: FakeVZ, bundle: Bundle) -> bytes | None:
    """Boot, save (a warm slot), stop: the bundle now holds State.save."""
    h = start(bundle)
    h.wait_started()
    h.driver.save_state()
    assert h.result() is VMExit.STOPPED and bundle.saved_state.exists()
    return read_data_representation(bundle.machine_identifier)


# -- the saveable configuration, checked before any boot -----------------------------------------------

def test_every_configuration_is_the_suspendable_set(fake_vz: FakeVZ, bundle: Bundle) -> None:
    # tart's --suspendable mode drops these; ours never has them, so save/restore accepts every VM
    fake_vz.knobs.unsaveable_devices = frozenset({"VZVirtioEntropyDeviceConfiguration",
                                                  "VZVirtioSoundDeviceConfiguration"})
    saved_slot(fake_vz, bundle)
    h = start(bundle)
    h.wait_started()
    assert bundle.read_metadata()["restored"] is True
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_warm_slot_build_that_cannot_be_saved_fails_before_booting(fake_vz: FakeVZ, tmp_path: Path) -> None:
    fake_vz.knobs.unsaveable_devices = frozenset({"VZVirtioSocketDeviceConfiguration"})
    b = make_bundle(tmp_path, name="warm-1.building", saveable=True)
    h = start(b)
    assert h.result() is VMExit.CONFIG_ERROR
    assert fake_vz.vms == [], "no VM was made, let alone booted"
    assert "to be saved as a warm slot" in h.events.messages[-1] and "VZErrorNotSupported" in h.events.messages[-1]
    assert "VZVirtioSocketDeviceConfiguration" in h.events.messages[-1]


def test_a_cold_runner_is_not_held_to_save_restore_support(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.save_restore_supported = False
    h = start(bundle)
    h.wait_started()
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_restore_into_an_unsaveable_configuration_boots_cold_without_trying(fake_vz: FakeVZ,
                                                                              bundle: Bundle) -> None:
    ident = saved_slot(fake_vz, bundle)
    fake_vz.knobs.save_restore_supported = False  # e.g. a host update changed what can be saved
    fake_vz.knobs.restore_error = ("VZErrorDomain", 12, "must not be reached")
    h = start(bundle)
    h.wait_started()
    meta = bundle.read_metadata()
    assert meta["restored"] is False and "VZErrorNotSupported" in meta["restore_error"]
    assert not bundle.saved_state.exists()
    assert read_data_representation(bundle.machine_identifier) != ident
    assert len(fake_vz.vms) == 2, "one VM for the save, one cold boot: no restore attempt"
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


# -- a restore checked live, within deadlines ------------------------------------------------------------

def test_a_live_restore_answers_the_vsock_probe(fake_vz: FakeVZ, bundle: Bundle) -> None:
    saved_slot(fake_vz, bundle)
    h = start(bundle)
    h.wait_started()
    assert any("warm start" in m and "it answers on vsock (refused: Connection reset by peer)" in m
               for m in h.events.messages)
    assert h.events.started_count == 1
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_restore_that_never_calls_back_falls_back_to_a_cold_boot(fake_vz: FakeVZ, bundle: Bundle) -> None:
    ident = saved_slot(fake_vz, bundle)
    fake_vz.knobs.restore_hangs = True
    t0 = time.monotonic()
    h = start(bundle, restore_timeout=0.3)
    h.wait_started()
    assert time.monotonic() - t0 < 3, "the deadline, not a hang"
    meta = bundle.read_metadata()
    assert meta["restored"] is False and "did not finish within 0.3s" in meta["restore_error"]
    assert read_data_representation(bundle.machine_identifier) != ident and not bundle.saved_state.exists()
    assert h.driver.status()["vm_state"] == "running"
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_restored_guest_that_runs_no_code_is_cold_booted(fake_vz: FakeVZ, bundle: Bundle) -> None:
    # a different network-device count: VZ restores and resumes, the guest never runs (tailscale #19331)
    saved_slot(fake_vz, bundle)
    data = json.loads(bundle.saved_state.read_text())
    bundle.saved_state.write_text(json.dumps({**data, "network_devices": 2}))
    h = start(bundle, live_timeout=0.3)
    h.wait_started()
    meta = bundle.read_metadata()
    assert meta["restored"] is False and "no sign of life within 0.3s" in meta["restore_error"]
    assert any("cold-booting with a fresh MachineIdentifier" in m for m in h.events.messages)
    assert h.events.started_count == 1, "boot_to_ssh counts from the cold boot, not the dead restore"
    assert fake_vz.vms[1]._state == fake_vz.sdk.enums["VZVirtualMachineStateStopped"], "the dead VM was stopped"
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_the_vm_of_a_failed_restore_is_released_before_the_cold_start(fake_vz: FakeVZ, bundle: Bundle) -> None:
    # one VM allowed, and a VM object holds the quota until it is gone: keeping the failed one would
    # make the cold start fail with code 6 (as after guest shutdowns on macOS 26)
    fake_vz.knobs.quota_until_released, fake_vz.knobs.max_vms = True, 1
    saved_slot(fake_vz, bundle)
    gc.collect()  # that VM's process is long gone on a real host
    assert fake_vz.vms[0] is None
    fake_vz.knobs.restore_error = ("VZErrorDomain", 12, "The virtual machine failed to restore with error "
                                                        "“invalid argument”.")
    h = start(bundle)
    h.wait_started()
    assert fake_vz.vms[1] is None, "the VM that failed its restore is gone"
    assert bundle.read_metadata()["restored"] is False
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_stop_while_checking_a_restored_guest_stops_it(fake_vz: FakeVZ, bundle: Bundle) -> None:
    saved_slot(fake_vz, bundle)
    data = json.loads(bundle.saved_state.read_text())
    bundle.saved_state.write_text(json.dumps({**data, "network_devices": 2}))  # the probe will hang
    h = start(bundle, live_timeout=30)
    wait_for(lambda: h.driver.status()["state"] == "checking")
    h.driver.request_stop()
    assert h.result() is VMExit.STOPPED
    assert h.events.started_count == 0


# -- save ---------------------------------------------------------------------------------------------------

def test_an_old_state_save_is_removed_before_a_save(fake_vz: FakeVZ, bundle: Bundle) -> None:
    bundle.saved_state.write_bytes(b"a stale save of an earlier attempt")  # the framework does not overwrite
    fake_vz.knobs.restore_error = ("VZErrorDomain", 12, "garbage")  # the stale file is refused at boot
    h = start(bundle)
    h.wait_started()
    fake_vz.knobs.restore_error = None
    stale = bundle.saved_state.exists()
    bundle.saved_state.write_bytes(b"stale again, while running")
    h.driver.save_state()
    assert h.result() is VMExit.STOPPED
    assert not stale and json.loads(bundle.saved_state.read_text())["fake-vz-save"]


# -- network disconnect ---------------------------------------------------------------------------------------

def test_a_lost_network_attachment_is_replaced(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle)
    h.wait_started()
    vm = fake_vz.vms[0]
    first = vm._props["networkDevices"][0]._props["attachment"]
    fake_vz.network_disconnect(vm)
    wait_for(lambda: any("attached a new NAT attachment" in m for m in h.events.messages))
    now = vm._props["networkDevices"][0]._props["attachment"]
    assert now is not None and now is not first
    assert type(now).__name__ == "VZNATNetworkDeviceAttachment"
    assert "VZErrorNetworkError" in next(m for m in h.events.messages if "disconnected" in m)
    assert h.driver.status()["vm_state"] == "running"
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_network_that_keeps_dropping_ends_the_vm_as_a_guest_error(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.reattach_holds = False  # every new attachment goes away again at once
    h = start(bundle)
    h.wait_started()
    fake_vz.network_disconnect(fake_vz.vms[0])
    assert h.result() is VMExit.GUEST_ERROR
    error = h.driver.status()["error"]
    assert f"after {vz_module.MAX_REATTACH} new NAT attachments" in error and "sit idle" in error
    assert sum("attached a new NAT attachment" in m for m in h.events.messages) == vz_module.MAX_REATTACH


def test_a_disconnect_while_not_running_is_only_logged(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.start_delay = 0.3
    h = start(bundle)
    wait_for(lambda: h.driver.status()["state"] == "starting")
    vm = fake_vz.vms[0]
    fake_vz.on_queue(vm, lambda: h.driver.on_delegate("network-disconnected", vm, None,
                                                        vm._props["networkDevices"][0]))
    h.wait_started()
    assert any("disconnected while starting" in m for m in h.events.messages)
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


# -- the host process's identity ---------------------------------------------------------------------------------

def test_root_is_refused_before_any_vm(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.euid = 0
    h = start(bundle)
    assert h.result() is VMExit.CONFIG_ERROR
    assert fake_vz.vms == []
    message = h.events.messages[-1]
    assert "refuses to run as root" in message and "Code=1" in message and "docs/macos-host.md" in message


@pytest.mark.parametrize(
    ("error", "exit", "words"),
    [
        (("VZErrorDomain", 1, "The virtual machine failed to start."), VMExit.START_FAILED,
         ["VZErrorInternal", "runs as root", "GUI login", "docs/macos-host.md"]),
        (("NSOSStatusErrorDomain", -25308, "SecKeyCreateRandomKey_ios failed"), VMExit.CONFIG_ERROR,
         ["errSecInteractionNotAllowed -25308", "login keychain", "never as root"]),
        (("VZErrorDomain", -9, "Failed to get current host key"), VMExit.CONFIG_ERROR,
         ["host key from the login keychain", "auto-login"]),
    ],
)
def test_host_setup_errors_name_the_cause_and_the_fix(fake_vz: FakeVZ, bundle: Bundle, error: tuple[str, int, str],
                                                      exit: VMExit, words: list[str]) -> None:
    fake_vz.knobs.start_error = error
    h = start(bundle)
    assert h.result() is exit
    for word in words:
        assert word in h.events.messages[-1]
