"""The `sim` driver: a simulated guest made of real parts (OpenSSH sshd, the runner-agent).

As root on Linux with the tools present, each VM is a **namespaced** guest — a small Linux host with
its own network (the runner's MAC on a per-agent bridge, an address from dnsmasq, which keeps
bootpd's lease file), PID, mount, UTS and IPC namespaces and an unprivileged user (`sim_guest`,
`sim_net`, `sim_init`). Elsewhere it falls back to the **loopback** guest (`sim_loopback`) and says
that it is the less faithful mode. Which one runs is this driver's choice (`sim_options`); the
agent's code path is the same for both, and for vz.

Both keep VZ's lifecycle: a cold boot mints a MachineIdentifier, State.save restores only into the
configuration it was made from (`sim_state`), a refused restore is a cold boot, save stops the VM,
and a restored guest that does not re-announce is cold-booted on the agent's word (`cold_boot`).
Both model vsock — the runner channel (`vm/channel.py`) — as a Unix socket in the bundle's vsock
directory that only this guest is given (namespaced: only its mount namespace shows it).
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

from shoes_vz.core.errors import DriverError
from shoes_vz.vm import identity_files
from shoes_vz.vm.channel import SOCKET_NAME, ChannelError, unix_exchange
from shoes_vz.vm.drivers import sim_state
from shoes_vz.vm.drivers.base import Driver, DriverEvents, DriverOptions
from shoes_vz.vm.drivers.sim_guest import GuestSpec, NamespacedGuest
from shoes_vz.vm.drivers.sim_loopback import LoopbackGuest
from shoes_vz.vm.drivers.sim_options import NAMESPACED, SimOptions, resolve_mode
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.leases import MACAddress

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/opt/homebrew/sbin/sshd")


def find_sshd() -> str:
    found = shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)
    if not found:
        raise DriverError("the sim driver needs OpenSSH's sshd (Debian/Ubuntu: apt-get install openssh-server)")
    return found


class SimDriver(Driver):
    name = "sim"

    @classmethod
    def preflight(cls) -> list[str]:
        try:
            find_sshd()
        except DriverError as e:
            return [str(e)]
        return []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop = threading.Event()
        self._hard = threading.Event()
        self._state = "stopped"
        self._guest: NamespacedGuest | LoopbackGuest | None = None
        self._mac: MACAddress | None = None
        self._cold_reason: str | None = None
        self.sim_options = SimOptions.parse(self.options.extra)

    @classmethod
    def describe(cls, options: DriverOptions) -> str:
        return "sim: " + resolve_mode(SimOptions.parse(options.extra))[1]

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self, events: DriverEvents) -> VMExit:
        refuse = self.sim_options.refuse_start_file
        if refuse and os.path.exists(refuse):
            raise DriverError(f"the number of VMs exceeds the system limit (sim: {refuse} exists, standing in for "
                              "Virtualization.framework's refusal, error code 6)", capacity=True)
        spec = GuestSpec.from_metadata(self.bundle, self.bundle.read_metadata())
        mode, why = resolve_mode(self.sim_options)
        events.log(f"sim: {why}")
        self._mac = spec.mac
        saved = self._restore(spec.mac, events)
        if saved is None:
            self._state = "starting"
            events.started()
            if self._stop.wait(self.options.boot_delay):
                return VMExit.STOPPED
        elif self._stop.wait(self.options.restore_delay):
            return VMExit.STOPPED
        while True:
            guest = self._guest = self._make_guest(mode, spec, saved, events)
            self.bundle.update_metadata(sim_mode=mode)
            if not guest.start(str(saved.get("ip_address", "")) if saved else None, self._stop):
                guest.stop(self._grace())  # asked to stop while booting: shut down as asked
                return VMExit.STOPPED
            if saved is not None and self.sim_options.restore_stalls:
                events.log("restore_stalls: the restored guest runs no code (its processes are stopped)")
                guest.freeze()
            self._state = "running"
            events.log(f"sim guest up ({mode}) at {guest.ip or 'an address DHCP is handing out'} "
                       f"(sshd :{spec.ssh_port})")
            status = self._watch(guest, events)
            if status is not None:
                return status
            # a cold boot asked for (a restored guest that did not re-announce): the same bundle, fresh
            self._state = "starting"
            guest.stop(0.0)
            reason, self._cold_reason = self._cold_reason, None
            events.log(f"{reason}; cold-booting with a fresh MachineIdentifier")
            self._mint_identity()
            self.bundle.update_metadata(restored=False, restore_error=reason)
            saved = None
            events.started()

    def _make_guest(self, mode: str, spec: GuestSpec, saved: dict[str, Any] | None,
                    events: DriverEvents) -> NamespacedGuest | LoopbackGuest:
        lease_file = self.options.lease_file or self.bundle.path.parent / "dhcpd_leases"

        def reachable(at: float) -> None:  # sshd listens on an address the guest holds (the SSH-ready lag's start)
            self.bundle.update_metadata(sshd_listening_at=at)

        if mode == NAMESPACED:
            return NamespacedGuest(self.bundle, spec, self.sim_options, lease_file, find_sshd, events.log, reachable,
                                   resumed=saved)
        return LoopbackGuest(self.bundle, spec, lease_file, find_sshd, events.log, reachable, resumed=saved)

    def _watch(self, guest: NamespacedGuest | LoopbackGuest, events: DriverEvents) -> VMExit | None:
        """Until the VM stops (its exit status) or a cold boot is asked for (None)."""
        status = VMExit.STOPPED
        while not self._stop.wait(0.1):
            if self._cold_reason is not None:
                return None
            if not guest.alive():
                events.log("the guest's sshd died")
                status = VMExit.GUEST_ERROR
                break
        self._state = "stopping"
        guest.stop(self._grace())
        self._state = "stopped"
        return status

    def _grace(self) -> float:
        return 0.0 if self._hard.is_set() else min(self.options.stop_grace, 2.0)

    def _restore(self, mac: MACAddress, events: DriverEvents) -> dict[str, Any] | None:
        """Restore State.save when present: the saved state, or None to boot cold.

        As with VZ the state is single-use and any refusal means a cold boot with a fresh
        MachineIdentifier (DESIGN §12), never a failed runner.
        """
        if not self.bundle.saved_state.exists():
            if not self.bundle.machine_identifier.exists() or identity_files.is_placeholder(
                    self.bundle.machine_identifier):
                self._mint_identity()  # what VZ does on a first start (a hand-made bundle may have none)
            return None
        self._state = "restoring"
        try:
            state = sim_state.load(self.bundle, mac)
        except sim_state.RestoreRefused as e:
            events.log(f"cannot restore State.save ({e}); deleted it, cold-booting with a fresh MachineIdentifier")
            self.bundle.saved_state.unlink(missing_ok=True)
            self._mint_identity()
            self.bundle.update_metadata(restored=False, restore_error=str(e))
            return None
        self.bundle.saved_state.unlink(missing_ok=True)
        events.started()
        self.bundle.update_metadata(restored=True)
        events.log("restoring State.save (warm start)")
        return state

    def channel(self, line: bytes, timeout: float) -> bytes:
        """The sim's vsock: the Unix socket in the bundle's vsock directory, which this guest alone sees."""
        if self._state != "running" or self._guest is None:
            raise ChannelError(f"the VM is {self._state}", retry=self._state in ("stopped", "starting", "restoring"))
        return unix_exchange(self.bundle.vsock_dir / SOCKET_NAME, line, timeout)

    def cold_boot(self, reason: str) -> None:
        if self._state != "running" or self.bundle.read_metadata().get("restored") is not True:
            raise DriverError(f"cold-boot: only a running restored VM (this one is {self._state})")
        self._cold_reason = reason or "the restored guest did not re-announce"

    def _mint_identity(self) -> None:
        identity_files.write_data_representation(self.bundle.machine_identifier, os.urandom(16))

    def request_stop(self) -> None:
        self._stop.set()

    def force_stop(self) -> None:
        self._hard.set()
        self._stop.set()

    def save_state(self) -> None:
        """Save to State.save and stop, as VZ's pause + save + stop: the disk stays as saved. The guest
        is stopped hard — its DHCP lease stays, so the restored guest asks for its address again."""
        if self._state != "running" or self._mac is None or self._guest is None:
            raise DriverError(f"cannot save: the VM is {self._state}")
        self._state = "saving"
        self._guest.freeze()  # VZ pauses before it saves: nothing changes under the save
        try:
            sim_state.save(self.bundle, self._mac, self._guest.ip)
        except OSError as e:
            self._guest.freeze(False)
            self._state = "running"
            raise DriverError(f"saving the VM state failed: {e}") from e
        self._hard.set()
        self._stop.set()

    def status(self) -> dict[str, Any]:
        guest = self._guest
        return {"state": self._state, "driver": self.name, "ip_address": guest.ip if guest else "",
                "mode": "" if guest is None else (NAMESPACED if isinstance(guest, NamespacedGuest) else "loopback"),
                "guest_pids": guest.pids() if guest else []}


__all__ = ["SimDriver", "find_sshd"]
