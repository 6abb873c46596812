"""The `sim` driver: a simulated guest made of real parts.

"Booting" hands the MAC an address in 127.100.0.0/16 through a simulated DHCP server that writes
bootpd's lease-file format, then starts a real OpenSSH `sshd` bound to that address (host key and
authorized_keys from the template) and the real runner-agent as a process of that "guest" (its
notify leaves from the guest address). The agent cannot tell this from a vz guest on the wire.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from shoes_vz.core.errors import DriverError
from shoes_vz.vm import identity_files
from shoes_vz.vm.drivers import sim_state
from shoes_vz.vm.drivers.base import Driver, DriverEvents
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.leases import Lease, MACAddress, add_lease, read_leases

SIM_NETWORK = ipaddress.ip_network("127.100.0.0/16")
LEASE_SECONDS = 600
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/opt/homebrew/sbin/sshd")


def find_sshd() -> str:
    found = shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)
    if not found:
        raise DriverError("the sim driver needs OpenSSH's sshd (Debian/Ubuntu: apt-get install openssh-server)")
    return found


def allocate_address(lease_file: Path, mac: MACAddress, now: datetime | None = None, prefer: str | None = None
                     ) -> str:
    """The address for `mac`: its unexpired lease's, else `prefer` when free (a restored guest keeps
    its address), else the lowest free one; recorded as a lease."""
    now = now or datetime.now(UTC)
    lease_file.parent.mkdir(parents=True, exist_ok=True)
    # one allocator at a time across vm processes (the lease writer has its own lock)
    with open(f"{lease_file}.alloc.lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        leases = [le for le in read_leases(lease_file) if le.expiry > now]
        mine = [le for le in leases if le.mac == mac]
        taken = {le.ip for le in leases if le.mac != mac}
        if mine:
            ip = max(mine, key=lambda le: le.expiry).ip
        elif prefer and prefer not in taken and ipaddress.ip_address(prefer) in SIM_NETWORK:
            ip = prefer
        else:
            ip = next((str(a) for a in _scan_order(lease_file) if str(a) not in taken), "")
            if not ip:
                raise DriverError(f"no free sim address left in {SIM_NETWORK} ({lease_file})")
        add_lease(
            lease_file,
            Lease(ip=ip, mac=mac, expiry=now + timedelta(seconds=LEASE_SECONDS), name="sim-guest",
                  identifier=None),
        )
        return ip


def _scan_order(lease_file: Path) -> Iterator[ipaddress.IPv4Address]:
    """Free addresses are searched from an offset derived from the lease file: each simulated
    "host" (its own lease file: a test, the demo, a benchmark) hands out its own corner of
    127.100/16, so two running side by side rarely give the same address to two guests."""
    first, count = int(SIM_NETWORK.network_address) + 2, SIM_NETWORK.num_addresses - 3
    start = int.from_bytes(hashlib.sha256(os.fsencode(lease_file.resolve())).digest()[:4], "big") % count
    for i in range(count):
        yield ipaddress.IPv4Address(first + (start + i) % count)


def _die_with_parent() -> None:
    # Linux: a guest part must not outlive its VM process, even when that one is SIGKILLed.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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
        self._children: list[subprocess.Popen[bytes]] = []
        self._ip = ""
        self._mac: MACAddress | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self, events: DriverEvents) -> VMExit:
        spec = self.bundle.read_metadata()
        try:
            mac = MACAddress.parse(spec["mac_address"])
            template_dir = Path(spec["template_dir"])
            ssh_port = int(spec.get("ssh_port", 22))
        except (KeyError, ValueError) as e:
            raise DriverError(f"{self.bundle.runtime_metadata}: incomplete launch spec: {e}") from e
        sshd = find_sshd()
        lease_file = self.options.lease_file or self.bundle.path.parent / "dhcpd_leases"
        self._mac = mac
        saved_ip = self._restore(mac, events)
        if saved_ip is None:
            self._state = "starting"
            events.started()
            if self._stop.wait(self.options.boot_delay):
                return VMExit.STOPPED
        elif self._stop.wait(self.options.restore_delay):
            return VMExit.STOPPED
        self._ip = allocate_address(lease_file, mac, prefer=saved_ip)
        home = self.bundle.guest_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cfg = self._write_sshd_config(template_dir, ssh_port, home)
        listening = threading.Event()

        def watch_sshd(line: str) -> None:
            if "Server listening on" in line:
                listening.set()

        sshd_proc = self._spawn([sshd, "-D", "-e", "-f", str(cfg)], "sshd", on_line=watch_sshd)
        if not listening.wait(10) or sshd_proc.poll() is not None:
            self._terminate_children()
            raise DriverError(f"sim sshd did not start on {self._ip}:{ssh_port} (see {self.bundle.log_file})")
        self.bundle.update_metadata(sshd_listening_at=time.time())
        # a restored guest's runner-agent re-announces with a new token (DESIGN §12): a new process does
        self._spawn(
            [
                sys.executable, "-m", "shoes_vz.guest.runner_agent",
                "--notify-url", str(spec.get("notify_url", "")),
                "--listen", f"{self._ip}:{int(spec.get('runner_agent_port', 8080))}",
                "--runner-dir", str(home),
                "--mac", str(mac),
                "--ip", self._ip,
                "--runner-id", str(spec.get("runner_id", "")),
            ],
            "runner-agent",
        )
        self._state = "running"
        events.log(f"sim guest up at {self._ip} (sshd :{ssh_port})")
        status = VMExit.STOPPED
        while not self._stop.wait(0.1):
            if sshd_proc.poll() is not None:
                events.log(f"guest sshd died with status {sshd_proc.returncode}")
                status = VMExit.GUEST_ERROR
                break
        self._state = "stopping"
        self._terminate_children(grace=0 if self._hard.is_set() else min(self.options.stop_grace, 2.0))
        self._state = "stopped"
        return status

    def _restore(self, mac: MACAddress, events: DriverEvents) -> str | None:
        """Restore State.save when present: the saved guest address, or None to boot cold.

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
        return str(state.get("ip_address", "")) or ""

    def _mint_identity(self) -> None:
        identity_files.write_data_representation(self.bundle.machine_identifier, os.urandom(16))

    def request_stop(self) -> None:
        self._stop.set()

    def force_stop(self) -> None:
        self._hard.set()
        self._stop.set()

    def save_state(self) -> None:
        """Save to State.save and stop, as VZ's pause + save + stop: the disk stays as saved."""
        if self._state != "running" or self._mac is None:
            raise DriverError(f"cannot save: the VM is {self._state}")
        self._state = "saving"
        try:
            sim_state.save(self.bundle, self._mac, self._ip)
        except OSError as e:
            self._state = "running"
            raise DriverError(f"saving the VM state failed: {e}") from e
        self._hard.set()
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {"state": self._state, "driver": self.name, "ip_address": self._ip,
                "guest_pids": [c.pid for c in self._children if c.poll() is None]}

    # -- parts of the guest ---------------------------------------------------------------------
    def _write_sshd_config(self, template_dir: Path, port: int, home: Path) -> Path:
        guest = self.bundle.guest_dir
        host_key = guest / "ssh_host_ed25519_key"
        # sshd refuses a host key others can read; the template's copy is frozen 0444
        with contextlib.suppress(FileNotFoundError):
            host_key.unlink()
        fd = os.open(host_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((template_dir / "sim" / "ssh_host_ed25519_key").read_bytes())
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
        cfg = guest / "sshd_config"
        cfg.write_text(
            "\n".join([
                f"ListenAddress {self._ip}:{port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {template_dir / 'sim' / 'authorized_keys'}",
                f"PidFile {guest / 'sshd.pid'}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UseDNS no",
                "MaxStartups 100:30:200",
                f"SetEnv SHOESVZ_GUEST_HOME={home} HOME={home}",
                "LogLevel INFO",
                "",
            ])
        )
        return cfg

    def _spawn(self, argv: list[str], label: str, on_line: Callable[[str], Any] | None = None
               ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._children.append(proc)
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout, label, on_line), daemon=True).start()
        return proc

    @staticmethod
    def _pump(stream: IO[bytes], label: str, on_line: Callable[[str], Any] | None) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            sys.stderr.write(f"[guest {label}] {line}\n")
            if on_line is not None:
                on_line(line)

    def _terminate_children(self, grace: float = 0.0) -> None:
        for c in self._children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM if grace else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for c in self._children:
            try:
                c.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        # what the guest's users started (setup_script, the runner) dies with the "VM" too
        self.bundle.kill_strays(exclude=frozenset({os.getpid()}))
