"""`LoopbackGuest`: the less faithful sim guest, for hosts where namespaced guests cannot run.

"Booting" hands the MAC an address in 127.100.0.0/16 through a simulated DHCP server that writes
bootpd's lease-file format, then starts a real OpenSSH `sshd` bound to that address (the template's
host key until the runner-agent's per-boot one, the agent's user CA for this runner alone) and the
real runner-agent as a process of that "guest" (its notify leaves from the guest address; its
runner channel is a Unix socket in the bundle whose path only it is told). The guest shares the
host's files, processes and network: its runner directory is `<guest home>/runner` (the host's /tmp
is everyone's). As root it runs as an unprivileged user of its own (`guest_uid`, named in a private
/etc/passwd), so it can write neither the template nor anything of the host's; otherwise as the
agent's user.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import ipaddress
import os
import pwd
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
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.channel import SOCKET_NAME
from shoes_vz.vm.drivers import sim_state, sim_sys
from shoes_vz.vm.drivers.sim_guest import HOST_KEY, GuestSpec, guest_uid, runner_agent_program, sshd_trust_lines
from shoes_vz.vm.drivers.sim_options import _which
from shoes_vz.vm.leases import Lease, MACAddress, add_lease, read_leases

SIM_NETWORK = ipaddress.ip_network("127.100.0.0/16")
LEASE_SECONDS = 600
GUEST_MOUNT = "/run/shoes-vz-guest"  # as root, where a guest's processes see its guest directory


def pids_of_uid(uid: int) -> list[int]:
    """Processes whose real uid is `uid` (a loopback guest's user is its own: all of them are the guest's)."""
    found = []
    for p in Path("/proc").iterdir() if os.path.isdir("/proc") else []:
        if p.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in (p / "status").read_text().splitlines():
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(p.name))
                        break
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


def loopback_notify_url(url: str) -> str:
    """`auto:PORT` means "the gateway": for a loopback guest that is the host at 127.0.0.1."""
    if url == "auto" or url.startswith("auto:"):
        port = url.partition(":")[2] or "8081"
        return f"http://127.0.0.1:{port}/notify-ip"
    return url


class LoopbackGuest:
    def __init__(self, bundle: Bundle, spec: GuestSpec, lease_file: Path, find_sshd: Callable[[], str],
                 log: Callable[[str], None], on_reachable: Callable[[float], None],
                 resumed: dict[str, Any] | None = None) -> None:
        self.bundle, self.spec, self.lease_file, self.find_sshd, self.log = bundle, spec, lease_file, find_sshd, log
        self.on_reachable = on_reachable
        self.resumed = resumed  # the State.save this guest is restored from (its runner-agent resumes)
        self.ip = ""
        self.listening_at: float | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        # as root the guest is a user of its own (never root), in a mount namespace of its own that shows
        # it a private /etc/passwd and its guest directory at GUEST_MOUNT (the path to the bundle may be
        # closed to it); its sshd stays root, as a Mac's, and logs every session in as that user
        self.uid: int | None = guest_uid(spec.runner_id) if os.geteuid() == 0 else None
        self.inside = Path(GUEST_MOUNT) if self.uid is not None else bundle.guest_dir

    def _in(self, path: Path) -> Path:
        """A path of the guest directory as the guest's processes see it."""
        return self.inside / path.relative_to(self.bundle.guest_dir)

    def start(self, request_ip: str | None, cancel: threading.Event) -> bool:
        _check_login_user(self.spec.ssh_user)
        sshd = self.find_sshd()
        self.ip = allocate_address(self.lease_file, self.spec.mac, prefer=request_ip)
        self._prepare_files()
        cfg = self._write_sshd_config()
        listening = threading.Event()

        def watch_sshd(line: str) -> None:
            if "Server listening on" in line:
                self.listening_at = time.time()
                listening.set()

        sshd_proc = self._spawn([sshd, "-D", "-e", "-f", str(self._in(cfg))], "sshd", on_line=watch_sshd,
                                as_root=True)
        deadline = time.monotonic() + 10
        while not listening.wait(0.01):
            if cancel.is_set():
                return False
            if sshd_proc.poll() is not None or time.monotonic() > deadline:
                self.stop(0.0)
                raise DriverError(f"sim sshd did not start on {self.ip}:{self.spec.ssh_port}")
        assert self.listening_at is not None
        self.on_reachable(self.listening_at)  # its address came first: it is reachable when sshd listens
        b = self.bundle
        resumes = self.resumed is not None and sim_state.restore_guest_state(b, self.resumed, self.uid)
        self._spawn([
            *self._runner_agent(),
            "--notify-url", loopback_notify_url(self.spec.notify_url),
            "--listen", f"{self.ip}:{self.spec.runner_agent_port}",
            "--runner-dir", str(self._in(b.guest_dir / "home" / "runner")), "--mac", str(self.spec.mac),
            "--ip", self.ip, "--runner-id", self.spec.runner_id,
            "--channel", f"unix:{self._in(b.vsock_dir / SOCKET_NAME)}", "--state-dir", str(self._in(b.guest_state_dir)),
            "--clock", "model", *(["--resumed"] if resumes else []),
        ], "runner-agent")
        return True

    def _runner_agent(self) -> list[str]:
        """The runner-agent's argv head: as root a copy in the guest directory under the host's python3
        (the guest user may reach neither this package nor its interpreter), else this package's."""
        if self.uid is None:
            return [sys.executable, "-m", "shoes_vz.guest.runner_agent"]
        program = self.bundle.guest_dir / "opt" / "runner-agent.py"
        shutil.copyfile(runner_agent_program(), program)
        python = _which("python3")
        if python is None:
            raise DriverError("a loopback sim guest of a root agent needs python3 in /usr")
        return [python, "-I", str(self._in(program))]

    def alive(self) -> bool:
        return bool(self.children) and self.children[0].poll() is None

    def pids(self) -> list[int]:
        """The guest's processes: its daemons, what they started, whatever its user runs."""
        found = {c.pid for c in self.children if c.poll() is None}
        found |= set(self.bundle.stray_pids(exclude=frozenset({os.getpid()})))
        if self.uid is not None:
            found |= set(pids_of_uid(self.uid))
        return sorted(found)

    def freeze(self, on: bool = True) -> None:
        """Stop (or continue) the guest's processes: a paused VM runs no code."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

    def _prepare_files(self) -> None:
        """The guest's own directories in the bundle (its home, vsock, per-boot state), and as root its
        /etc/passwd and /etc/group: the host's with the guest user added."""
        b, g = self.bundle, self.bundle.guest_dir
        shutil.rmtree(g, ignore_errors=True)  # scratch, as a namespaced guest's
        for d in (g / "home", b.vsock_dir, b.guest_state_dir, g / "etc", g / "opt"):
            d.mkdir(parents=True, exist_ok=True)
        for d in (b.vsock_dir, b.guest_state_dir):
            os.chmod(d, 0o700)
        if self.uid is not None:
            user, uid = self.spec.ssh_user, self.uid
            b.update_metadata(guest_uid=uid)  # whose processes are this VM's (Bundle.stray_pids)
            home = self._in(g / "home")
            passwd = Path("/etc/passwd").read_text()
            (g / "etc/passwd").write_text(passwd.rstrip("\n") + f"\n{user}:x:{uid}:{uid}:shoes-vz sim guest:{home}:"
                                          "/bin/sh\n")
            group = Path("/etc/group").read_text()
            (g / "etc/group").write_text(group.rstrip("\n") + f"\n{user}:x:{uid}:\n")
            for d in (g, g / "home", b.vsock_dir, b.guest_state_dir):
                os.chown(d, uid, uid)

    def _write_sshd_config(self) -> Path:
        guest = self.bundle.guest_dir
        host_key = guest / HOST_KEY  # the image's key: sshd refuses a key others can read (the template's is 0400)
        with contextlib.suppress(FileNotFoundError):
            host_key.unlink()
        fd = os.open(host_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((self.spec.template_dir / "sim" / HOST_KEY).read_bytes())
        home = self._in(guest / "home")  # the key stays root's: as root, sshd is root's too
        cfg = guest / "sshd_config"
        cfg.write_text("\n".join([
            f"ListenAddress {self.ip}:{self.spec.ssh_port}",
            *sshd_trust_lines(str(self._in(self.bundle.guest_state_dir)), str(self._in(host_key))),
            f"PidFile {self._in(guest / 'sshd.pid')}",
            f"AllowUsers {self.spec.ssh_user}",
            "StrictModes no", "UsePAM no", "PermitRootLogin no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UseDNS no", "MaxStartups 100:30:200",
            f"SetEnv SHOESVZ_GUEST_HOME={home} HOME={home}",
            "LogLevel INFO", "",
        ]))
        return cfg

    def _spawn(self, argv: list[str], label: str, on_line: Callable[[str], Any] | None = None, *,
               as_root: bool = False) -> subprocess.Popen[bytes]:
        """A process of the guest: as root, in the guest's view and (unless `as_root`: its sshd) as its user."""
        preexec: Callable[[], None]
        env: dict[str, str] | None = None
        if self.uid is not None:
            g = self.bundle.guest_dir
            os.makedirs(GUEST_MOUNT, mode=0o755, exist_ok=True)  # an empty mount point; each guest's view fills it
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # a root sshd's privilege-separation directory
            preexec = functools.partial(sim_sys.enter_guest_view, str(g), GUEST_MOUNT, None if as_root else self.uid)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self._in(g / "home")),
                   "USER": self.spec.ssh_user, "LOGNAME": self.spec.ssh_user}
            if as_root:
                env["PATH"] = os.environ.get("PATH", env["PATH"])
        else:
            preexec = sim_sys.die_with_parent
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    preexec_fn=preexec, env=env, cwd=str(self.bundle.guest_dir))
        except (OSError, subprocess.SubprocessError) as e:
            raise DriverError(f"the guest's {label} did not start: {argv[0]}: {e}") from None
        self.children.append(proc)
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(proc.stdout, label, on_line), daemon=True).start()
        return proc

    def stop(self, grace: float) -> None:
        self.freeze(False)  # a stopped process takes no SIGTERM
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
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _check_login_user(user: str) -> None:
    """As root, a loopback guest logs in as an unprivileged user of its own (made up for it, never the
    host's root); otherwise its sshd runs as this process and can admit only this process's user."""
    if os.geteuid() == 0:
        if user == "root" or not user or not user.replace("-", "").replace("_", "").isalnum():
            raise DriverError(f"a loopback sim guest of a root agent logs in as an unprivileged user of its own, "
                              f"not {user!r}: make the template with `shoes-vz template init-sim` (its user is "
                              "`runner`)")
        return
    me = getpass.getuser()
    if user != me:
        raise DriverError(f"a loopback sim guest's sshd runs as {me} and can admit only {me}, but the template "
                          f"logs in as {user!r}: make the template as {me} (`shoes-vz template init-sim`)")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise DriverError(f"the template logs in as {user!r}, which is no user of this host") from None


def _pump(stream: IO[bytes], label: str, on_line: Callable[[str], Any] | None) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        sys.stderr.write(f"[guest {label}] {line}\n")
        if on_line is not None:
            on_line(line)
