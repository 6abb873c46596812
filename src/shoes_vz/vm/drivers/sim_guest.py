"""`NamespacedGuest`: a sim VM as a small Linux host of its own namespaces, owned by `vm run`.

- **Network**: its own network namespace with one interface, `eth0`, carrying the runner's MAC, the
  peer of a veth on the agent's bridge (`sim_net`), which plays vmnet's NAT gateway. Its address
  comes from dnsmasq on the bridge through busybox's `udhcpc`; the runner-agent finds the gateway
  (`--notify-url auto:PORT`) as it does on a Mac.
- **Processes**: its own PID namespace whose PID 1 is `sim_init`, tied to `vm run` by
  PR_SET_PDEATHSIG (through `unshare --kill-child`): however `vm run` ends, SIGKILL included, PID 1
  dies and the kernel kills everything the guest started. Its own UTS and IPC namespaces too.
- **User**: sshd, the runner-agent and whatever a job runs are the template's `ssh_user` with an
  unprivileged uid of the VM's own (≥ 1048576, derived from the runner id), defined by the guest's
  own `/etc/passwd` and `/etc/group` bound over the host's in its mount namespace — the host's
  account database is never changed. No set-uid binary works in it (nosuid, no_new_privs).
- **Files**: its own mount namespace and root (see `sim_init`): `/tmp`, `/var` and the home are
  the bundle's `guest/` directory, the template is read-only, nothing else of the host's is
  writable and no other guest, bundle or agent file is visible. The runner-agent watches
  `/tmp/runner`, where myshoes' setup script unpacks the runner (`RUNNER_BASE_DIRECTORY=/tmp`).
- **vsock**: the bundle's `guest/vsock/` is the guest's `/run/vsock/`; the runner-agent listens on
  `channel.sock` there and `vm run` connects to it from the host (the runner channel,
  `vm/channel.py`). No other guest's mount namespace has it.
- **sshd** trusts the agent's user CA for this runner's id alone and serves the runner-agent's
  per-boot host key (both in `/run/shoes-vz`, the bundle's `guest/state/`), the template's key until
  the host's first hello; there is no authorized key.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shoes_vz.core.errors import DriverError
from shoes_vz.core.net import is_loopback
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.channel import SOCKET_NAME
from shoes_vz.vm.drivers import sim_state, sim_sys
from shoes_vz.vm.drivers.sim_init import DHCP_RELEASE_WINDOW
from shoes_vz.vm.drivers.sim_net import Membership, SimNetwork
from shoes_vz.vm.drivers.sim_options import SimOptions, _which, dhcp_client
from shoes_vz.vm.leases import MACAddress

UID_BASE, UID_SPAN = 1 << 20, 1 << 24
START_TIMEOUT = 15.0
RUNNER_DIR = "/tmp/runner"  # myshoes: $RUNNER_BASE_DIRECTORY/runner, /tmp by default
GUEST_VSOCK = "/run/vsock"       # the bundle's guest/vsock, as the guest sees it
GUEST_STATE = "/run/shoes-vz"    # the bundle's guest/state: the runner-agent's per-boot files
HOST_KEY = "ssh_host_ed25519_key"

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc's hook in a sim guest: configure eth0 and say the address (PID 1 reads it on stdout)
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
  cur=$(ip -4 -o addr show dev "$interface" | awk '{print $4}')
  if [ "$cur" != "$ip/$mask" ]; then
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/$mask" dev "$interface"
  fi
  [ -n "$router" ] && ip -4 route replace default via "${router%% *}" dev "$interface"
  echo "shoes-vz-address $ip" ;;
esac
exit 0
"""


@dataclass(frozen=True)
class GuestSpec:
    """What `vm run` knows of the guest from the bundle's launch spec (RuntimeMetadata.json)."""

    runner_id: str
    mac: MACAddress
    template_dir: Path
    ssh_port: int
    ssh_user: str
    notify_url: str
    runner_agent_port: int

    @classmethod
    def from_metadata(cls, bundle: Bundle, meta: dict[str, Any]) -> GuestSpec:
        try:
            return cls(str(meta.get("runner_id") or bundle.runner_id), MACAddress.parse(meta["mac_address"]),
                       Path(meta["template_dir"]), int(meta.get("ssh_port", 22)), str(meta.get("ssh_user", "")),
                       str(meta.get("notify_url", "")), int(meta.get("runner_agent_port", 8080)))
        except (KeyError, ValueError) as e:
            raise DriverError(f"{bundle.runtime_metadata}: incomplete launch spec: {e}") from e


def sshd_trust_lines(state_dir: str, image_key: str) -> list[str]:
    """What a guest's sshd trusts (docs/security.md §9): the runner-agent's per-boot host key (the
    image's until the host's first hello), certificates of the agent's CA for this runner's id only."""
    return [f"HostKey {state_dir}/{HOST_KEY}", f"HostKey {image_key}",
            f"TrustedUserCAKeys {state_dir}/user_ca.pub", f"AuthorizedPrincipalsFile {state_dir}/principals",
            "AuthorizedKeysFile none"]


def guest_uid(runner_id: str) -> int:
    return UID_BASE + int.from_bytes(hashlib.sha256(runner_id.encode()).digest()[:3], "big") % UID_SPAN


def hostname_for(runner_id: str) -> str:
    return "sim-" + "".join(c for c in runner_id.lower() if c.isalnum())[:40]


def runner_agent_program() -> Path:
    spec = importlib.util.find_spec("shoes_vz.guest.runner_agent")
    if spec is None or spec.origin is None:
        raise DriverError("the runner-agent program (shoes_vz/guest/runner_agent.py) is missing")
    return Path(spec.origin)


class NamespacedGuest:
    def __init__(self, bundle: Bundle, spec: GuestSpec, options: SimOptions, lease_file: Path,
                 find_sshd: Callable[[], str], log: Callable[[str], None],
                 on_reachable: Callable[[float], None], resumed: dict[str, Any] | None = None) -> None:
        self.bundle, self.spec, self.options, self.log = bundle, spec, options, log
        self.resumed = resumed  # the State.save this guest is restored from (its runner-agent resumes)
        self.agent_resumes = False
        self.on_reachable = on_reachable
        self.network = SimNetwork(lease_file, options)
        self.find_sshd = find_sshd
        self.uid = guest_uid(spec.runner_id)
        self.home = f"/home/{spec.ssh_user}"
        self.ip = ""
        self.listening_at: float | None = None
        self.address_at: float | None = None
        self._reported = threading.Lock()
        self._reachable_said = False
        self.init_pid = 0
        self.veth = ""
        self.error = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.member: Membership | None = None
        self._ready = threading.Event()
        self._listening = threading.Event()
        self._sshd_gone = threading.Event()
        self._failed = threading.Event()

    # -- start -------------------------------------------------------------------------------------
    def start(self, request_ip: str | None, cancel: threading.Event) -> bool:
        """Build and boot the guest; True once its sshd listens, False if `cancel` came first."""
        user = self.spec.ssh_user
        if not user or user == "root" or not user.replace("-", "").replace("_", "").isalnum():
            raise DriverError(f"a namespaced sim guest logs in as an unprivileged user, not {user!r}: make the "
                              "template with `shoes-vz template init-sim` as root (its user is `runner`)")
        notify_host = urllib.parse.urlsplit(self.spec.notify_url).hostname or ""
        if not self.spec.notify_url.startswith("auto") and notify_host and is_loopback(notify_host):
            raise DriverError(f"the agent's notify URL {self.spec.notify_url} is on loopback, which a namespaced "
                              "sim guest cannot reach: set agent.notify_listen to 0.0.0.0:PORT (guests reach the "
                              "gateway of their bridge, as 192.168.64.1 on a Mac)")
        sshd = self.find_sshd()
        client = dhcp_client()
        python = _which("python3")
        if client is None or python is None:
            raise DriverError("a namespaced sim guest needs busybox's udhcpc and python3 in /usr")
        self.member = self.network.join(self.log)
        try:
            self._prepare_files()
            return self._boot(sshd, client, python, request_ip, cancel)
        except BaseException:
            self.stop(0.0)
            raise

    def _boot(self, sshd: str, client: list[str], python: str, request_ip: str | None,
              cancel: threading.Event) -> bool:
        guest = self.bundle.guest_dir
        cfg = {
            "root": str(guest / "root"), "guest": str(guest), "template": str(self.spec.template_dir),
            "user": self.spec.ssh_user, "uid": self.uid, "gid": self.uid, "home": self.home,
            "hostname": hostname_for(self.spec.runner_id), "sshd": sshd, "python": python, "dhcp": client,
            "dhcp_release": self.options.dhcp_release, "dhcp_timeout": self.options.dhcp_timeout,
            "request_ip": request_ip or "",
            "runner_agent": {"notify_url": self.spec.notify_url, "port": self.spec.runner_agent_port,
                             "runner_dir": RUNNER_DIR, "runner_id": self.spec.runner_id,
                             "channel": f"unix:{GUEST_VSOCK}/{SOCKET_NAME}", "state_dir": GUEST_STATE,
                             "resumed": self.agent_resumes},
        }
        unshare = _which("unshare") or "unshare"
        self.proc = subprocess.Popen(
            [unshare, "--pid", "--fork", "--kill-child", "--mount", "--net", "--uts", "--ipc", "--",
             sys.executable, "-S", "-m", "shoes_vz.vm.drivers.sim_init", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=sim_sys.die_with_parent, env=sim_sys.package_env(),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._events, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=_forward, args=(self.proc.stderr,), daemon=True).start()
        if not self._wait(self._ready, cancel, "did not start its PID 1"):
            return False
        assert self.member is not None
        self.veth = self.member.attach(self.init_pid, self.spec.mac, str(self.bundle.path))
        self._command("link")
        return self._wait(self._listening, cancel, "sshd did not start")

    def _wait(self, what: threading.Event, cancel: threading.Event, failure: str) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while not what.wait(0.01):
            if cancel.is_set():
                return False
            if self._failed.is_set() or self._sshd_gone.is_set() or (self.proc and self.proc.poll() is not None):
                raise DriverError(f"the sim guest {failure}: {self.error or 'it exited'}")
            if time.monotonic() > deadline:
                raise DriverError(f"the sim guest {failure} within {START_TIMEOUT:.0f}s")
        return True

    def _events(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            kind = ev.get("event")
            if kind == "ready":
                self.init_pid = int(ev["pid"])
                self._ready.set()
            elif kind == "address":
                if ev["ip"] != self.ip:
                    self.log(f"guest {self.spec.mac} got {ev['ip']} by DHCP")
                self.ip = str(ev["ip"])
                self.address_at = self.address_at or time.time()
                self._maybe_reachable()
            elif kind == "sshd":
                self.listening_at = time.time()
                self._listening.set()
                self._maybe_reachable()
            elif kind == "exit":
                self.log(f"guest {ev.get('name')} exited with status {ev.get('status')}")
                if ev.get("name") == "sshd":
                    self._sshd_gone.set()
            elif kind == "error":
                self.error = str(ev.get("message", ""))
                self._failed.set()

    def _maybe_reachable(self) -> None:
        """sshd listens and the guest has its address (in either order): a probe can succeed from now."""
        with self._reported:
            if self.listening_at is None or self.address_at is None or self._reachable_said:
                return
            self._reachable_said = True
        self.on_reachable(max(self.listening_at, self.address_at))

    def _command(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def _prepare_files(self) -> None:
        """The guest's own files, in the bundle: home, /tmp, /var, its /etc entries, the driver's files."""
        g = self.bundle.guest_dir
        shutil.rmtree(g, ignore_errors=True)  # a restored guest's disk is the slot's clone; this is scratch
        for d in ("root", "home", "tmp", "var/tmp", "var/log", "etc", "opt", "vsock", "state"):
            (g / d).mkdir(parents=True, exist_ok=True)
        for d in ("tmp", "var/tmp"):
            os.chmod(g / d, 0o1777)
        for d in ("home", "vsock", "state"):
            os.chown(g / d, self.uid, self.uid)
        for d in ("vsock", "state"):
            os.chmod(g / d, 0o700)  # the guest's, and root's (vm run) alone
        user, uid, name = self.spec.ssh_user, self.uid, hostname_for(self.spec.runner_id)
        files = {
            "etc/passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{uid}:{uid}:shoes-vz sim guest:"
                          f"{self.home}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "etc/group": f"root:x:0:\n{user}:x:{uid}:\nnogroup:x:65534:\n",
            "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n",
            "etc/hostname": name + "\n",
            "opt/udhcpc.script": UDHCPC_SCRIPT,
            "opt/sshd_config": self._sshd_config(),
        }
        for rel, text in files.items():
            (g / rel).write_text(text)
        os.chmod(g / "opt/udhcpc.script", 0o755)
        shutil.copyfile(runner_agent_program(), g / "opt/runner-agent.py")
        key = g / "opt" / HOST_KEY  # the image's key; sshd runs as the guest user and refuses a key others read
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((self.spec.template_dir / "sim" / HOST_KEY).read_bytes())
        os.chown(key, uid, uid)
        # a restored guest's runner-agent takes back what it held at the save (its token, host key, CA)
        self.agent_resumes = self.resumed is not None and sim_state.restore_guest_state(self.bundle, self.resumed, uid)

    def _sshd_config(self) -> str:
        return "\n".join([
            f"ListenAddress 0.0.0.0:{self.spec.ssh_port}",
            *sshd_trust_lines(GUEST_STATE, f"/opt/shoes-vz/{HOST_KEY}"),
            f"PidFile /run/user/{self.uid}/sshd.pid",
            f"AllowUsers {self.spec.ssh_user}",
            "StrictModes no", "UsePAM no", "PermitRootLogin no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UseDNS no", "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp", "LogLevel INFO", "",
        ])

    # -- running and stopping ----------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._sshd_gone.is_set()

    def freeze(self, on: bool = True) -> None:
        """Stop (or continue) every process of the guest but its PID 1: a paused VM runs no code."""
        for pid in self.pids():
            if pid != self.init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

    def pids(self) -> list[int]:
        """Host pids of every process in the guest's PID namespace."""
        if not self.init_pid:
            return []
        try:
            ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return []
        found = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(p / "ns" / "pid") == ns:
                        found.append(int(p.name))
        return found

    def stop(self, grace: float) -> None:
        """A shutdown (every process asked, then killed after `grace`), or at once with grace 0."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            if grace > 0:
                self._command(f"stop {grace}")
            else:
                with contextlib.suppress(ProcessLookupError):
                    if self.init_pid:
                        os.kill(self.init_pid, signal.SIGKILL)
                proc.kill()
            try:
                proc.wait(grace + DHCP_RELEASE_WINDOW + 2.0)  # the guest's init: its daemons, then the DHCP release
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    if self.init_pid:
                        os.kill(self.init_pid, signal.SIGKILL)
                proc.kill()
                proc.wait()
        if self.member is not None:
            if self.veth:
                self.member.detach(self.veth)
            self.member.close()
            self.member = None


def _forward(stream: IO[bytes]) -> None:
    for raw in stream:
        sys.stderr.write(raw.decode(errors="replace"))
        sys.stderr.flush()
