"""Addresses for ever (issue 12 item 2): 1,000 sequential runners on one host, each with an address,
from a DHCP server with bootpd's rules — the real pool size (253 in a /24), day-long leases, sticky
MACs, guests that never give their lease back — because the agent recycles its MACs; with a fresh
MAC per runner a pool is spent once the runners outnumber it (at runner 254 for bootpd's).

What is real: the agent's MAC pool (`agent/mac_pool.py`: acquire for a cold runner, release once its
VM is gone, persisted in the state dir), the namespaced sim's network (`SimNetwork`: the bridge and
its holder's dnsmasq writing bootpd's lease file through the lease script), each runner's guest as
the DHCP server sees it — its MAC on a veth in a network namespace, busybox's `udhcpc` asking — and
the agent's reading of the lease file (`newest_lease_for`) for the address. What is light: the guest
is that veth and its DHCP client only, in one namespace for all (no sshd, runner-agent, bundle or
`vm run`: the lifecycle's, proven by test_sim_namespaced's 300 VMs), so a runner costs ~0.1 s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from stack_fixtures import require_namespaced

from shoes_vz.agent.mac_pool import MacPool
from shoes_vz.core.ids import new_runner_id
from shoes_vz.vm.drivers.sim_net import Membership, SimNetwork
from shoes_vz.vm.drivers.sim_options import SimOptions, dhcp_client
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

RUNNERS = 1000
POOL = 253          # bootpd's NAT pool (192.168.64.2–254), and the sim's in its /24
DAY = 86_400        # bootpd's default lease time


@contextlib.contextmanager
def network(tmp_path: Path, pool_size: int | None = None) -> Iterator[tuple[Membership, Path]]:
    """The agent's sim NAT network: day-long leases, the whole /24 (bootpd's 253) unless `pool_size`."""
    require_namespaced()
    lease_file = tmp_path / "dhcpd_leases"
    net = SimNetwork(lease_file, SimOptions(lease_seconds=DAY, pool_size=pool_size, network_linger=0.0))
    member = net.join(lambda _line: None)
    assert member.state.pool_size == (pool_size or POOL) and member.state.lease_seconds == DAY
    try:
        yield member, lease_file
    finally:
        member.close()  # the holder sees no member and removes the network


class LightGuest:
    """A network namespace with a shell in it: each runner's guest is a veth there carrying the runner's
    MAC and a DHCP client asking for an address (one namespace for all: a new one per runner costs two
    process starts more and shows the DHCP server nothing new — it sees MACs)."""

    def __init__(self) -> None:
        self.shell = subprocess.Popen(["unshare", "--net", "--", "sh"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        host_ns = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{self.shell.pid}/ns/net") == host_ns and time.monotonic() < deadline:
            time.sleep(0.002)
        client = dhcp_client()
        assert client is not None
        self.ask = " ".join([*client, "-i", "eth0", "-n", "-q", "-f", "-s", "/bin/true", "-T", "1", "-t", "3"])

    def boot(self, member: Membership, lease_file: Path, mac: MACAddress, runner_id: str) -> str | None:
        """The guest with `mac` asks for an address, then is destroyed without releasing it (as a macOS
        guest that is torn down); the address the agent reads from the lease file, or None."""
        veth = member.attach(self.shell.pid, mac, runner_id)
        try:
            assert self.shell.stdin is not None and self.shell.stdout is not None
            self.shell.stdin.write(f"ip link set eth0 up && {self.ask} >/dev/null 2>&1; echo $?\n")
            self.shell.stdin.flush()
            if self.shell.stdout.readline().strip() != "0":
                return None
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # dnsmasq's lease script writes the file as it answers
                lease = newest_lease_for(read_leases(lease_file), mac)
                if lease is not None:
                    return lease.ip
                time.sleep(0.005)
            return None
        finally:
            member.detach(veth)  # its eth0 goes with it

    def close(self) -> None:
        self.shell.kill()
        self.shell.wait()


async def run_sequentially(member: Membership, lease_file: Path, pool: MacPool, count: int) -> list[str | None]:
    """`count` runners one after another, each taking its MAC from the agent's pool and giving it back
    once its guest is gone; stops at the first runner without an address."""
    addresses: list[str | None] = []
    guest = LightGuest()
    try:
        for _ in range(count):
            runner_id = new_runner_id()
            mac = pool.acquire(runner_id, set())
            ip = await asyncio.to_thread(guest.boot, member, lease_file, mac, runner_id)
            pool.release(runner_id, vm_gone=True)
            addresses.append(ip)
            if ip is None:
                break
    finally:
        guest.close()
        await pool.drain()
    return addresses


async def test_a_thousand_sequential_runners_all_get_an_address_with_recycled_macs(tmp_path: Path) -> None:
    pool = MacPool(tmp_path / "state", recycle=True)
    pool.load()
    started = time.monotonic()
    with network(tmp_path) as (member, lease_file):
        addresses = await run_sequentially(member, lease_file, pool, RUNNERS)
    took = time.monotonic() - started
    assert None not in addresses and len(addresses) == RUNNERS, f"runner {len(addresses)} got no address"
    leases = read_leases(lease_file)
    assert len(pool) == 1 and len(leases) == 1  # one MAC, one lease: the pool is untouched
    assert {le.ip for le in leases} == set(addresses)  # the same address every time (sticky)
    print(f"{RUNNERS} sequential runners: {took:.1f}s ({took / RUNNERS * 1000:.0f} ms each); MACs {len(pool)}, "
          f"leases {len(leases)} of {POOL}")
    # the pool persists: a restarted agent recycles the same MAC
    again = MacPool(tmp_path / "state", recycle=True)
    again.load()
    assert again.macs() == pool.macs()


async def test_with_a_fresh_mac_per_runner_the_pool_is_spent_after_its_size(tmp_path: Path) -> None:
    """The control, on a pool of 16 to keep it short (with 253 it is runner 254: the same arithmetic,
    a fresh MAC a lease for a day): the runner after the pool's size gets no address."""
    small = 16
    pool = MacPool(tmp_path / "state", recycle=False)
    with network(tmp_path, pool_size=small) as (member, lease_file):
        addresses = await run_sequentially(member, lease_file, pool, small + 1)
        assert None not in addresses[:small] and len(set(addresses[:small])) == small
        assert addresses[small:] == [None], "a fresh MAC got an address from a spent pool"
        assert len(read_leases(lease_file)) == small  # every address leased for a day, to a guest that is gone
