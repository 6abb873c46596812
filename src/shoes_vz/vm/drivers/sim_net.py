"""`SimNetwork`: one agent's NAT network of namespaced sim guests — a bridge, a subnet and dnsmasq.

As vmnet's bridge100 on a Mac, it appears with the first VM and goes after the last. `vm run`
processes share it by reference count: each holds a shared flock on `refs.lock` for its whole
life (the kernel drops it however the process ends, SIGKILL included). A detached **holder**
process (`sim_holder`) makes the bridge, owns dnsmasq and waits for the count to reach zero; it then
lingers a moment (`network_linger`) and removes the bridge. The creating VM only picks the subnet
and writes the state, so it can be killed at any moment without leaving a link. `setup.lock`
serialises creating, joining and removing; `holder.lock` is held by a live holder.

Names come from the agent's lease file (one lease file = one NAT network, as bootpd's on a Mac):
`svz<7 hex>` for the bridge, `svz<7 hex><5 hex>` for each guest's host-side veth (≤ 15 bytes), and
every link carries an alias naming the lease file, so a sweep removes exactly what this agent's
dead holder left and never another agent's. Runtime files live in `.<lease file>.simnet/` beside
the lease file; the leases themselves stay in the lease file (the DHCP server's database, see
`sim_dhcp`). The default subnet is a /24 of 198.18.0.0/15 (RFC 2544's test range) that no host
route or address overlaps, chosen from a start derived from the same key; an explicit subnet that
overlaps one is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from shoes_vz.core.errors import DriverError
from shoes_vz.vm.drivers import sim_sys
from shoes_vz.vm.drivers.sim_options import GUEST_PATH, SimOptions, _which
from shoes_vz.vm.leases import MACAddress

AUTO_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
SUBNET_LOCK = Path("/run/lock/shoes-vz-sim-subnets.lock")
PREFIX = "svz"
READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class NetworkState:
    """What a live network is: written by its creator, read by every VM that joins it."""

    bridge: str
    subnet: str
    gateway: str
    first: str
    last: str
    lease_seconds: int
    lease_file: str
    linger: float
    created_at: float

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def pool_size(self) -> int:
        return int(ipaddress.IPv4Address(self.last)) - int(ipaddress.IPv4Address(self.first)) + 1


def ip_command(*args: str, batch: list[str] | None = None) -> str:
    """Run iproute2's `ip`; DriverError with its message on failure."""
    exe = shutil.which("ip", path=GUEST_PATH) or "ip"
    argv = [exe, *(["-batch", "-"] if batch is not None else []), *args]
    done = subprocess.run(argv, input="\n".join(batch or []) + "\n" if batch is not None else None,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        what = "; ".join(batch) if batch is not None else " ".join(args)
        raise DriverError(f"ip {what}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # e.g. no IPv6 in this kernel
        Path(path).write_text(value)


def link_alias(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
    except OSError:
        return ""


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def host_networks(exclude_dev: str = "") -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix the host routes or holds an address in (all tables), but the default route."""
    nets: list[ipaddress.IPv4Network] = []
    kinds = {"unicast", "local", "broadcast", "multicast", "blackhole", "unreachable", "prohibit", "throw",
             "anycast", "nat"}
    for line in ip_command("-4", "-o", "route", "show", "table", "all").splitlines():
        words = line.split()
        if exclude_dev and f"dev {exclude_dev}" in f" {line} ":
            continue
        if words and words[0] in kinds:
            words = words[1:]
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(words[0], strict=False))
    for line in ip_command("-4", "-o", "addr", "show").splitlines():
        words = line.split()
        if len(words) > 3 and words[1] != exclude_dev:
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Interface(words[3]).network)
    return nets


def pick_subnet(key: bytes, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of 198.18.0.0/15, from a start derived from `key`, that overlaps nothing taken."""
    subnets: list[ipaddress.IPv4Network] = list(AUTO_RANGE.subnets(new_prefix=24))  # type: ignore[arg-type]
    start = int.from_bytes(key[:4], "big") % len(subnets)
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise DriverError(f"no free /24 left in {AUTO_RANGE} for a sim network: set driver_options.subnet")


def _lock(path: Path, mode: int, *, block: bool = True) -> int | None:
    """An open fd holding flock `mode` on `path`, or None when `block` is False and it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class Membership:
    """One VM's place on the network: hold it for the VM's life; `close` gives it back."""

    state: NetworkState
    alias: str
    refs_fd: int | None

    def attach(self, pid: int, mac: MACAddress, owner: str) -> str:
        """A veth pair: `eth0` carrying `mac` inside the network namespace of `pid`, its peer on the bridge."""
        for _ in range(8):
            name = f"{PREFIX}{self.alias_key}{secrets.token_hex(3)[:5]}"
            try:
                ip_command("link", "add", "name", name, "type", "veth", "peer", "name", "eth0",
                           "address", str(mac), "netns", str(pid))
            except DriverError as e:
                if "File exists" in str(e) and link_exists(name):
                    continue
                raise
            write_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")
            Path(f"/sys/class/net/{name}/ifalias").write_text(f"{self.alias} {owner}"[:255])
            ip_command("link", "set", "dev", name, "master", self.state.bridge, "up")
            return name
        raise DriverError("could not name a veth for the guest (every candidate exists)")

    @property
    def alias_key(self) -> str:
        return self.state.bridge.removeprefix(PREFIX)

    @staticmethod
    def detach(veth: str) -> None:
        """The kernel removes the pair with the guest's namespace, lazily: remove it now."""
        if link_exists(veth):
            with contextlib.suppress(DriverError):
                ip_command("link", "del", "dev", veth)

    def close(self) -> None:
        if self.refs_fd is not None:
            os.close(self.refs_fd)
            self.refs_fd = None


class SimNetwork:
    def __init__(self, lease_file: Path, options: SimOptions) -> None:
        self.lease_file = lease_file.resolve()
        self.options = options
        self.identity = str(self.lease_file)
        self.key = hashlib.sha256(os.fsencode(self.identity)).digest()
        self.bridge = PREFIX + self.key.hex()[:7]
        self.alias = f"shoes-vz sim {self.identity}"
        self.runtime = self.lease_file.parent / f".{self.lease_file.name}.simnet"
        self.log_file = self.lease_file.parent / f"{self.lease_file.name}.dhcp.log"

    @property
    def state_file(self) -> Path:
        return self.runtime / "state.json"

    def lock_path(self, name: str) -> Path:
        return self.runtime / f"{name}.lock"

    # -- joining -----------------------------------------------------------------------------------
    def join(self, log: Callable[[str], None]) -> Membership:
        """A place on this agent's network, creating (or repairing) it first when needed."""
        self.runtime.mkdir(parents=True, exist_ok=True)
        setup = _lock(self.lock_path("setup"), fcntl.LOCK_EX)
        try:
            state = self._read_state()
            if state is None or not link_exists(state.bridge) or link_alias(state.bridge) != self.alias:
                self._sweep(state, log)
                state = self._create(log)
            else:
                self._check_matches(state)
                if self.holder_alive() is False:
                    log(f"sim network {state.bridge}: its holder is gone; starting a new one")
                    self._start_holder(state)
            refs = _lock(self.lock_path("refs"), fcntl.LOCK_SH)
            return Membership(state, self.alias, refs)
        finally:
            assert setup is not None
            os.close(setup)

    def sweep_if_dead(self, log: Callable[[str], None]) -> None:
        """Remove what a dead holder left, for whoever stopped this agent (no VM of it will come to
        sweep); a live holder removes its own."""
        if not self.runtime.is_dir():
            return
        with locked(self.lock_path("setup"), fcntl.LOCK_EX):
            if not self.holder_alive():
                self._sweep(self._read_state(), log)

    def holder_alive(self) -> bool:
        fd = _lock(self.lock_path("holder"), fcntl.LOCK_SH, block=False)
        if fd is None:
            return True
        os.close(fd)
        return False

    def _read_state(self) -> NetworkState | None:
        try:
            return NetworkState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _check_matches(self, state: NetworkState) -> None:
        o = self.options
        wrong = []
        if o.subnet is not None and str(o.subnet) != state.subnet:
            wrong.append(f"subnet {state.subnet}, not {o.subnet}")
        if o.pool_size is not None and o.pool_size != state.pool_size:
            wrong.append(f"a pool of {state.pool_size}, not {o.pool_size}")
        if o.lease_seconds != state.lease_seconds:
            wrong.append(f"{state.lease_seconds}s leases, not {o.lease_seconds}s")
        if wrong:
            raise DriverError(f"the sim network {state.bridge} of {self.identity} already runs with "
                              f"{', '.join(wrong)}: the VMs of one agent share it; stop them to change it")

    # -- creating and sweeping ---------------------------------------------------------------------
    def _create(self, log: Callable[[str], None]) -> NetworkState:
        SUBNET_LOCK.parent.mkdir(parents=True, exist_ok=True)
        glock = _lock(SUBNET_LOCK, fcntl.LOCK_EX)  # two agents starting at once never pick one /24
        try:
            taken = host_networks()
            subnet = self.options.subnet
            if subnet is None:
                subnet = pick_subnet(self.key, taken)
            else:
                clash = [t for t in taken if subnet.overlaps(t)]
                if clash:
                    raise DriverError(f"sim subnet {subnet} overlaps the host's {clash[0]}: choose another "
                                      "driver_options.subnet (or leave it out for a free one)")
            hosts = list(subnet.hosts())
            gateway, pool = hosts[0], hosts[1:]
            if self.options.pool_size is not None:
                if self.options.pool_size > len(pool):
                    raise DriverError(f"pool_size {self.options.pool_size} does not fit in {subnet} "
                                      f"({len(pool)} guest addresses)")
                pool = pool[:self.options.pool_size]
            state = NetworkState(self.bridge, str(subnet), str(gateway), str(pool[0]), str(pool[-1]),
                                 self.options.lease_seconds, self.identity, self.options.network_linger,
                                 time.time())
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(state)))
            os.replace(tmp, self.state_file)
            # the holder makes the bridge: however this process dies from here on, it leaves nothing that
            # the holder (or, without one, the next sweep) does not remove. The subnet lock stays held
            # until the bridge carries its address.
            try:
                self._start_holder(state)
            except BaseException:
                self._sweep(None, lambda _: None)  # a holder that never got ready, and what it made
                raise
        finally:
            assert glock is not None
            os.close(glock)
        log(f"sim network {state.bridge} up: {state.subnet}, gateway {state.gateway}, "
            f"pool {state.first}–{state.last} ({state.pool_size}), leases {state.lease_seconds}s")
        return state

    def _make_bridge(self, state: NetworkState) -> None:
        mac = MACAddress(bytes([0x02, 0x5E]) + self.key[4:8])
        ip_command("link", "add", "name", state.bridge, "address", str(mac), "type", "bridge",
                   "forward_delay", "0", "stp_state", "0")
        try:
            write_sysctl(f"/proc/sys/net/ipv6/conf/{state.bridge}/disable_ipv6", "1")
            write_sysctl(f"/proc/sys/net/ipv4/conf/{state.bridge}/forwarding", "0")  # traffic stays here
            Path(f"/sys/class/net/{state.bridge}/ifalias").write_text(self.alias[:255])
            ip_command(batch=[f"addr add {state.gateway}/{state.network.prefixlen} dev {state.bridge}",
                              f"link set dev {state.bridge} up"])
        except BaseException:
            with contextlib.suppress(DriverError):
                ip_command("link", "del", "dev", state.bridge)
            raise

    def _start_holder(self, state: NetworkState) -> None:
        """Start the holder (it makes the bridge if there is none, runs dnsmasq) and wait until DHCP is served."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            # PID 1 of its own PID namespace: when the holder dies, however, the kernel kills its dnsmasq
            # (dnsmasq drops to `nobody`, which would clear a PR_SET_PDEATHSIG)
            holder = subprocess.Popen(
                [_which("unshare") or "unshare", "--pid", "--fork", "--kill-child", "--",
                 sys.executable, "-S", "-m", "shoes_vz.vm.drivers.sim_holder", str(self.runtime)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                env=sim_sys.package_env(),
            )
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], READY_TIMEOUT)
        line = holder.stdout.readline() if ready else b""
        holder.stdout.close()
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            said = line.decode(errors="replace").strip()
            why = said.removeprefix("failed: ") if said.startswith("failed: ") else "its DHCP server did not start"
            raise DriverError(f"the sim network {state.bridge} did not come up: {why} (see {self.log_file})")

    def _sweep(self, state: NetworkState | None, log: Callable[[str], None]) -> None:
        """Remove what a dead (or bridge-less) holder of THIS network left: processes, links, state."""
        killed = _kill_mentioning(str(self.runtime))  # an old holder and its dnsmasq: they own nothing now
        if killed:
            with locked(self.lock_path("holder"), fcntl.LOCK_EX):  # until they are gone
                pass
        left = self._remove_links()
        for name in ("state.json", "dnsmasq.pid", "lease-script"):
            (self.runtime / name).unlink(missing_ok=True)
        if left or killed or state is not None:
            log(f"swept a dead sim network of {self.identity}: links {', '.join(left) or 'none'}, "
                f"{len(killed)} process(es)")

    def _remove_links(self) -> list[str]:
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir("/sys/class/net")):
                alias = link_alias(name)
                if name.startswith(self.bridge) and (alias == self.alias or alias.startswith(self.alias + " ")):
                    with contextlib.suppress(DriverError):
                        ip_command("link", "del", "dev", name)
                        removed.append(name)
        return removed


def _kill_mentioning(text: str) -> list[int]:
    """SIGKILL every process whose command line contains `text`; their pids."""
    found = []
    needle = os.fsencode(text)
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (p / "cmdline").read_bytes():
                    os.kill(int(p.name), 9)
                    found.append(int(p.name))
    return found


@contextlib.contextmanager
def locked(path: Path, mode: int) -> Iterator[None]:
    fd = _lock(path, mode)
    try:
        yield
    finally:
        assert fd is not None
        os.close(fd)
