"""The sim network's holder: the bridge and dnsmasq on it while any VM uses it, then nothing.

    python -m shoes_vz.vm.drivers.sim_holder RUNTIME_DIR

Started detached by the `vm run` that creates the network (`sim_net`), as PID 1 of a PID namespace
of its own (`unshare --pid --fork`). It makes the bridge (its creator only wrote the state, so a
creator killed at any moment leaves nothing the holder does not remove), prints `ready` once
dnsmasq serves DHCP (to a creator that may be gone by then), restarts dnsmasq should it die, and
when no VM has held `refs.lock` for `linger` seconds it stops dnsmasq and removes the bridge and
the runtime state. SIGTERM tears the network down at once. When the holder dies, however, the
kernel kills its namespace and so dnsmasq: even a SIGKILLed holder leaves no DHCP server; the
bridge it leaves is swept by the next VM of the same agent (or by the `LocalStack` that stopped
the agent).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from shoes_vz.core.errors import DriverError
from shoes_vz.vm.drivers import sim_sys
from shoes_vz.vm.drivers.sim_net import NetworkState, SimNetwork, _lock, ip_command, link_alias, link_exists
from shoes_vz.vm.drivers.sim_options import SimOptions, _which

POLL = 0.1


def dnsmasq_argv(state: NetworkState, runtime: Path, script: Path) -> list[str]:
    exe = _which("dnsmasq") or "dnsmasq"
    return [
        exe, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",  # DHCP only, no DNS
        f"--interface={state.bridge}", "--bind-dynamic", "--except-interface=lo",
        f"--dhcp-range={state.first},{state.last},{state.network.netmask},{state.lease_seconds}s",
        "--dhcp-option=6",  # no DNS server: guests reach the gateway and each other, nothing else
        "--leasefile-ro", f"--dhcp-script={script}",  # the bootpd-format lease file is the database
        "--dhcp-authoritative", "--no-ping", "--dhcp-sequential-ip",  # lowest free address first, as bootpd
        f"--pid-file={runtime / 'dnsmasq.pid'}", "--user=nobody", "--group=nogroup", "--log-facility=-",
    ]


class Holder:
    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.state = NetworkState(**json.loads((runtime / "state.json").read_text()))
        self.net = SimNetwork(Path(self.state.lease_file), SimOptions())
        self.dnsmasq: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        # opened once: the runtime directory may be removed under a lingering holder (a test's temp
        # dir), and the bridge must still go when the linger ends
        self.setup_fd = os.open(self.net.lock_path("setup"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.refs_fd = os.open(self.net.lock_path("refs"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _script(self) -> Path:
        script = self.runtime / "lease-script"
        tmp = script.with_suffix(".tmp")
        tmp.write_text("#!/bin/sh\nexec " + shlex.join([sys.executable, "-S", "-m", "shoes_vz.vm.drivers.sim_dhcp",
                                                        self.state.lease_file]) + ' "$@"\n')
        os.chmod(tmp, 0o755)
        os.replace(tmp, script)
        return script

    def make_bridge(self) -> None:
        """The bridge of a new network (its creator only wrote the state); a repaired one has it."""
        bridge = self.state.bridge
        if not link_exists(bridge):
            self.net._make_bridge(self.state)
        elif link_alias(bridge) != self.net.alias:
            raise DriverError(f"a link named {bridge} exists that is not this network's bridge")

    def start_dnsmasq(self) -> bool:
        """Start dnsmasq; True once it says it serves DHCP on the bridge."""
        proc = subprocess.Popen(dnsmasq_argv(self.state, self.runtime, self._script()), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=sim_sys.package_env())
        self.dnsmasq = proc
        assert proc.stderr is not None
        serving = threading.Event()
        threading.Thread(target=_pump, args=(proc.stderr, serving), daemon=True).start()
        deadline = time.monotonic() + 10
        while not serving.wait(0.01):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
        return True

    def wait_unused(self) -> None:
        """Block until no VM has held the network for `linger` seconds (or SIGTERM); then hold
        `setup.lock` and `refs.lock` exclusively, so no VM can join while it is torn down."""
        lingered = False
        while True:
            if self.stopping.is_set():
                fcntl.flock(self.setup_fd, fcntl.LOCK_EX)
                return
            if self.dnsmasq is not None and self.dnsmasq.poll() is not None:
                sys.stderr.write(f"dnsmasq exited with {self.dnsmasq.returncode}; restarting it\n")
                time.sleep(0.5)
                self.start_dnsmasq()
            if not _try_lock(self.refs_fd):
                lingered = False
                self.stopping.wait(POLL)
                continue
            if not _try_lock(self.setup_fd):  # a VM is joining: it will hold refs in a moment
                fcntl.flock(self.refs_fd, fcntl.LOCK_UN)
                self.stopping.wait(POLL / 2)
                continue
            if lingered or self.state.linger == 0:
                return
            fcntl.flock(self.setup_fd, fcntl.LOCK_UN)
            fcntl.flock(self.refs_fd, fcntl.LOCK_UN)
            lingered = True
            self.stopping.wait(self.state.linger)

    def tear_down(self) -> None:
        if self.dnsmasq is not None and self.dnsmasq.poll() is None:
            self.dnsmasq.terminate()  # it hands its pending lease changes to its script helper first
            try:
                self.dnsmasq.wait(3)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait()
        _drain_children(10.0)  # that helper, orphaned to us (PID 1): let it write the last leases
        if link_exists(self.state.bridge) and link_alias(self.state.bridge) == self.net.alias:
            with contextlib.suppress(Exception):
                ip_command("link", "del", "dev", self.state.bridge)
        self.net._remove_links()
        for name in ("state.json", "dnsmasq.pid", "lease-script", "lease-script.tmp"):
            (self.runtime / name).unlink(missing_ok=True)
        sys.stderr.write(f"sim network {self.state.bridge} removed\n")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _drain_children(timeout: float) -> None:
    """Reap children (dnsmasq's script helper is reparented to us) until none is left or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def _pump(stream: IO[bytes], serving: threading.Event) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if "DHCP, IP range" in line:
            serving.set()
        sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    runtime = Path(args[0])
    me = _lock(runtime / "holder.lock", fcntl.LOCK_EX)  # an old holder may still be exiting
    try:
        holder = Holder(runtime)
    except (OSError, ValueError, TypeError) as e:
        sys.stderr.write(f"sim network holder: no usable state in {runtime}: {e}\n")
        return 1

    def _stop(_signum: int, _frame: Any) -> None:
        holder.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        try:
            holder.make_bridge()
        except (DriverError, OSError) as e:
            _tell(f"failed: {e}")
            return 1
        if not holder.start_dnsmasq():
            _tell("failed: dnsmasq did not start")
            return 1
        _tell("ready")
        holder.wait_unused()
        return 0
    finally:
        holder.tear_down()  # whatever ended us but SIGKILL: the bridge goes with the holder
        assert me is not None  # a blocking lock
        os.close(me)


def _tell(line: str) -> None:
    """Answer the VM process that started us, once; it may be gone (SIGKILLed while it waited), and
    the network is ours to remove all the same."""
    sys.stderr.write(line + "\n")
    with contextlib.suppress(OSError):  # BrokenPipeError: no reader
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


if __name__ == "__main__":
    sys.exit(main())
