"""`LoopbackGuest`: the less faithful sim guest, for hosts where namespaced guests cannot run.

"Booting" hands the MAC an address in 127.100.0.0/16 through a simulated DHCP server that writes
bootpd's lease-file format, then starts a real OpenSSH `sshd` bound to that address (host key and
authorized_keys from the template) and the real runner-agent as a process of that "guest" (its
notify leaves from the guest address). The guest shares the host's files, processes, user and
network: its runner directory is `<guest home>/runner` (the host's /tmp is everyone's).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import ipaddress
import os
import pwd
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
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers import sim_sys
from shoes_vz.vm.drivers.sim_guest import GuestSpec
from shoes_vz.vm.leases import Lease, MACAddress, add_lease, read_leases

SIM_NETWORK = ipaddress.ip_network("127.100.0.0/16")
LEASE_SECONDS = 600


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


def loopback_notify_url(url: str) -> str:
    """`auto:PORT` means "the gateway": for a loopback guest that is the host at 127.0.0.1."""
    if url == "auto" or url.startswith("auto:"):
        port = url.partition(":")[2] or "8081"
        return f"http://127.0.0.1:{port}/notify-ip"
    return url


class LoopbackGuest:
    def __init__(self, bundle: Bundle, spec: GuestSpec, lease_file: Path, find_sshd: Callable[[], str],
                 log: Callable[[str], None], on_reachable: Callable[[float], None]) -> None:
        self.bundle, self.spec, self.lease_file, self.find_sshd, self.log = bundle, spec, lease_file, find_sshd, log
        self.on_reachable = on_reachable
        self.ip = ""
        self.listening_at: float | None = None
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, request_ip: str | None, cancel: threading.Event) -> bool:
        _check_login_user(self.spec.ssh_user)
        sshd = self.find_sshd()
        self.ip = allocate_address(self.lease_file, self.spec.mac, prefer=request_ip)
        home = self.bundle.guest_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cfg = self._write_sshd_config(home)
        listening = threading.Event()

        def watch_sshd(line: str) -> None:
            if "Server listening on" in line:
                self.listening_at = time.time()
                listening.set()

        sshd_proc = self._spawn([sshd, "-D", "-e", "-f", str(cfg)], "sshd", on_line=watch_sshd)
        deadline = time.monotonic() + 10
        while not listening.wait(0.01):
            if cancel.is_set():
                return False
            if sshd_proc.poll() is not None or time.monotonic() > deadline:
                self.stop(0.0)
                raise DriverError(f"sim sshd did not start on {self.ip}:{self.spec.ssh_port}")
        assert self.listening_at is not None
        self.on_reachable(self.listening_at)  # its address came first: it is reachable when sshd listens
        # a restored guest's runner-agent re-announces with a new token (DESIGN §12): a new process does
        self._spawn([
            sys.executable, "-m", "shoes_vz.guest.runner_agent",
            "--notify-url", loopback_notify_url(self.spec.notify_url),
            "--listen", f"{self.ip}:{self.spec.runner_agent_port}",
            "--runner-dir", str(home / "runner"), "--mac", str(self.spec.mac), "--ip", self.ip,
            "--runner-id", self.spec.runner_id,
        ], "runner-agent")
        return True

    def alive(self) -> bool:
        return bool(self.children) and self.children[0].poll() is None

    def pids(self) -> list[int]:
        return [c.pid for c in self.children if c.poll() is None]

    def _write_sshd_config(self, home: Path) -> Path:
        guest = self.bundle.guest_dir
        host_key = guest / "ssh_host_ed25519_key"
        # sshd refuses a host key others can read; the template's copy is frozen 0444
        with contextlib.suppress(FileNotFoundError):
            host_key.unlink()
        fd = os.open(host_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((self.spec.template_dir / "sim" / "ssh_host_ed25519_key").read_bytes())
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
        cfg = guest / "sshd_config"
        cfg.write_text("\n".join([
            f"ListenAddress {self.ip}:{self.spec.ssh_port}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {self.spec.template_dir / 'sim' / 'authorized_keys'}",
            f"PidFile {guest / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UseDNS no", "MaxStartups 100:30:200",
            f"SetEnv SHOESVZ_GUEST_HOME={home} HOME={home}",
            "LogLevel INFO", "",
        ]))
        return cfg

    def _spawn(self, argv: list[str], label: str, on_line: Callable[[str], Any] | None = None
               ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=sim_sys.die_with_parent)
        self.children.append(proc)
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(proc.stdout, label, on_line), daemon=True).start()
        return proc

    def stop(self, grace: float) -> None:
        for c in self.children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM if grace else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for c in self.children:
            try:
                c.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        # what the guest's users started (setup_script, the runner) dies with the "VM" too
        self.bundle.kill_strays(exclude=frozenset({os.getpid()}))


def _check_login_user(user: str) -> None:
    """A loopback guest's sshd runs as this process: as root it admits any host user, else only itself."""
    me = getpass.getuser()
    if os.geteuid() != 0 and user != me:
        raise DriverError(f"a loopback sim guest's sshd runs as {me} and can admit only {me}, but the template "
                          f"logs in as {user!r}: make the template as {me} (`shoes-vz template init-sim`)")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise DriverError(f"the template logs in as {user!r}, which is no user of this host: a loopback sim guest "
                          "is the host itself (namespaced guests, as root on Linux, have their own users)") from None


def _pump(stream: IO[bytes], label: str, on_line: Callable[[str], Any] | None) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        sys.stderr.write(f"[guest {label}] {line}\n")
        if on_line is not None:
            on_line(line)
