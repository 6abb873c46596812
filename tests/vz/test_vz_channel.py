"""The vz driver's runner channel (vm/drivers/vz_channel.py) against the generated fake: vsock from
the VM object's own socket device, on its queue; and the agent's cold boot of a silent restored VM."""

from __future__ import annotations

import json
import socket
import time

import pytest
from fakevz import FakeVZ
from test_vz_driver import save_then_stop
from vzharness import start

from shoes_vz.core.errors import DriverError
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.channel import CHANNEL_PORT, ChannelError
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.identity_files import read_data_representation


def echo_guest(conn: socket.socket) -> None:
    """The guest's runner-agent, reduced to its wire shape: one line in, one welcome line out."""
    with conn:
        hello = json.loads(conn.makefile("rb").readline())
        conn.sendall(json.dumps({"shoes_vz": "welcome", "nonce": hello["nonce"]}).encode() + b"\n")


def test_the_channel_is_the_vms_own_vsock_port(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.vsock_listeners[CHANNEL_PORT] = echo_guest
    h = start(bundle)
    h.wait_started()
    answer = h.driver.channel(json.dumps({"nonce": "n-1"}).encode(), 5.0)
    assert json.loads(answer) == {"shoes_vz": "welcome", "nonce": "n-1"}
    used = {k[1:3] for k in fake_vz.used if k[0] == "method"}
    assert {("VZVirtioSocketDevice", "connectToPort:completionHandler:"),
            ("VZVirtioSocketConnection", "fileDescriptor"), ("VZVirtioSocketConnection", "close")} <= used
    assert fake_vz.violations == []  # the VM's device was used on the VM's queue
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_a_guest_not_listening_yet_is_a_retry(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle)
    h.wait_started()
    with pytest.raises(ChannelError) as e:
        h.driver.channel(b"{}", 2.0)
    assert e.value.retry and "vsock port 8079" in str(e.value)
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_cold_boot_of_a_restored_vm_takes_a_fresh_identity(fake_vz: FakeVZ, bundle: Bundle) -> None:
    ident = save_then_stop(fake_vz, bundle)
    h = start(bundle)
    h.wait_started()
    assert bundle.read_metadata()["restored"] is True
    h.driver.cold_boot("the restored guest did not re-announce within 1s")
    deadline = time.monotonic() + 5
    # DESIGN §12: a fresh identity, and the restore recorded as not done
    while bundle.read_metadata().get("restored") is not False or \
            read_data_representation(bundle.machine_identifier) == ident or h.driver.status()["state"] != "running":
        assert time.monotonic() < deadline, "no cold boot"
        time.sleep(0.01)
    assert bundle.read_metadata()["restore_error"] == "the restored guest did not re-announce within 1s"
    with pytest.raises(DriverError):  # a cold-booted VM is no restored one: asked again, refused
        while True:
            h.driver.cold_boot("again")
            assert time.monotonic() < deadline
            time.sleep(0.01)
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED


def test_cold_boot_of_a_cold_vm_is_refused(fake_vz: FakeVZ, bundle: Bundle) -> None:
    h = start(bundle)
    h.wait_started()
    with pytest.raises(DriverError, match="only a running restored VM"):
        h.driver.cold_boot("no")
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED
