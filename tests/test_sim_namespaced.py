"""The namespaced sim guest at the VM-process level: real `vm run` processes, namespaces, a bridge,
dnsmasq and udhcpc — boundaries attacked from inside a guest, and nothing left behind.

Every test here needs root on Linux with util-linux, iproute2, dnsmasq and udhcpc (it fails in CI
without them). The guests are started by hand (`tests/simvm.py`), without server or agent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from simvm import SimVM, guest_processes, links_of, wait_until
from stack_fixtures import have_sshd, require, require_namespaced

from shoes_vz.stack import LocalStack
from shoes_vz.template import Template, init_sim
from shoes_vz.vm.leases import read_leases


@pytest.fixture
def template(tmp_path: Path) -> Template:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    require_namespaced()
    return init_sim(tmp_path / "templates", "ns")


@pytest.fixture
def vms(template: Template, tmp_path: Path) -> Iterator[list[SimVM]]:
    started: list[SimVM] = []
    yield started
    for vm in started:
        vm.kill()


def new_vm(vms: list[SimVM], template: Template, root: Path, name: str, **kw: object) -> SimVM:
    vm = SimVM(template, root / "runners", root / "dhcpd_leases", name, **kw)  # type: ignore[arg-type]
    vms.append(vm)
    return vm.start()


def guest_run(vm: SimVM, command: str) -> tuple[int, str]:
    """Run `command` in the guest over SSH as its user, logged in as the agent would: (exit status, output)."""
    return vm.run(command)


def ready(vm: SimVM) -> str:
    ip = vm.wait_address()
    vm.wait_listening()
    return ip


def test_a_guest_cannot_read_another_guests_files_or_signal_its_processes(template: Template, tmp_path: Path,
                                                                         vms: list[SimVM]) -> None:
    a, b = new_vm(vms, template, tmp_path, "guest-a"), new_vm(vms, template, tmp_path, "guest-b")
    _ip_a, ip_b = ready(a), ready(b)
    rc, _ = guest_run(b, "echo b-secret > ~/secret && chmod 644 ~/secret && "
                         "(setsid nohup sleep 3600 >/dev/null 2>&1 < /dev/null &)")
    assert rc == 0
    b_pids = wait_until(lambda: [p for p in b.status()["guest_pids"] if _comm(p) == "sleep"], 5)
    assert b_pids, "guest b's sleep did not start"
    b_home = b.bundle.guest_dir / "home"
    assert (b_home / "secret").read_text() == "b-secret\n"  # it is there, on the host
    attack = " ; ".join([
        f"cat {b_home}/secret", "cat /home/*/secret", f"ls {b.bundle.path}", f"ls {a.runners}",
        f"ls {template.path}", f"cat {tmp_path / 'dhcpd_leases'}",
        *(f"kill -TERM {pid}" for pid in b_pids), *(f"kill -0 {pid}" for pid in b.status()["guest_pids"]),
        "touch /template/owned", "touch /usr/owned", "touch /etc/owned", "cat /template/sim/id_ed25519",
        "cat /template/sim/ssh_host_ed25519_key",
        "sudo -n true", "grep NoNewPrivs /proc/self/status", "id -u", "ps -e -o pid=,comm=",
        "cat /sys/class/net/eth0/address",
    ])
    _, out = guest_run(a, attack)
    assert "b-secret" not in out
    assert out.count("No such file or directory") >= 6, out
    assert out.count("No such process") >= len(b_pids), out
    assert out.count("Read-only file system") == 3, out
    assert "NoNewPrivs:\t1" in out and "-----BEGIN" not in out, out
    assert "ssh_host_ed25519_key: Permission denied" in out, out  # the template's private key is 0400 root's
    uid = int(next(line for line in out.splitlines() if line.strip().isdigit() and len(line.strip()) >= 6))
    assert uid != 0 and uid == os.stat(a.bundle.guest_dir / "home").st_uid
    assert str(a.mac) in out  # its one interface carries the runner's MAC
    # its process list is its own: PID 1 is its init, and nothing of guest b's is there
    pids = [int(line.split()[0]) for line in out.splitlines() if line.strip() and line.split()[0].isdigit()
            and len(line.split()) == 2]
    assert 1 in pids and max(pids) < min(b_pids)
    # the attack changed nothing: b's sleep lives, its file is intact, the template unwritten
    assert all(_alive(p) for p in b_pids)
    assert (b_home / "secret").read_text() == "b-secret\n"
    assert not (template.path / "owned").exists()
    # and the guests do share a network, as on a Mac's NAT: a reaches b's sshd
    rc, out = guest_run(a, f"python3 -c 'import socket; socket.create_connection((\"{ip_b}\", "
                           f"{template.meta.ssh_port}), 3); print(\"reached\")'")
    assert rc == 0 and "reached" in out


def test_sigkill_of_the_vm_process_leaves_no_guest_process_and_no_namespace(template: Template, tmp_path: Path,
                                                                           vms: list[SimVM]) -> None:
    vm = new_vm(vms, template, tmp_path, "doomed")
    ready(vm)
    # what a setup_script leaves running: a detached sleep, its own session, cwd in the guest's home
    rc, _ = guest_run(vm, "cd ~ && (setsid nohup sleep 3600 >/dev/null 2>&1 < /dev/null &) && echo ok")
    assert rc == 0
    pids = wait_until(lambda: [p for p in vm.status()["guest_pids"] if _comm(p) == "sleep"] and
                      vm.status()["guest_pids"], 5)
    assert pids
    init = min(pids)
    netns = os.readlink(f"/proc/{init}/ns/net")
    veths = vm.veths()
    assert len(veths) == 1
    assert vm.proc is not None
    os.kill(vm.proc.pid, signal.SIGKILL)
    vm.proc.wait(10)
    gone = wait_until(lambda: not any(_alive(p) for p in pids), 10)
    assert gone, [p for p in pids if _alive(p)]
    assert not _holders_of_netns(netns)
    assert wait_until(lambda: not any(os.path.exists(f"/sys/class/net/{v}") for v in veths), 10)
    assert not [p for p in guest_processes() if str(vm.bundle.path).encode() in Path(f"/proc/{p}/cmdline")
                .read_bytes()]


def test_300_sequential_vms_leak_no_link_namespace_or_lease(template: Template, tmp_path: Path,
                                                          vms: list[SimVM]) -> None:
    """Every tenth VM is SIGKILLed, so its guest never releases its lease: those stay, unexpired, as
    the pool's rules say; every other VM gives its address back when it shuts down. 300 fresh MACs
    outnumber the /24 pool (253): without releases the last ones would get nothing."""
    lease_file = tmp_path / "dhcpd_leases"
    killed, addresses, logs = set(), [], {}
    t0 = time.monotonic()
    for i in range(300):
        vm = new_vm(vms, template, tmp_path, f"seq-{i}")
        addresses.append(vm.wait_address())
        if i % 10 == 9:
            vm.kill()
            killed.add(vm.mac)
        else:
            assert vm.stop() == 0, vm.log()[-2000:]
        logs[vm.mac] = vm.log()
        vms.remove(vm)
        shutil.rmtree(vm.bundle.path)
        assert wait_until(lambda vm=vm: not vm.veths(), 5), vm.veths()
    elapsed = time.monotonic() - t0
    print(f"300 sequential sim VMs in {elapsed:.1f}s ({elapsed / 300 * 1000:.0f} ms each)")
    leases = wait_until(lambda: (ls := read_leases(lease_file)) and {le.mac for le in ls} == killed and ls, 10)
    extra = [le for le in read_leases(lease_file) if le.mac not in killed]
    assert leases, "leases of cleanly stopped VMs remain:\n" + "\n".join(
        f"{le.mac} {le.ip}:\n{logs.get(le.mac, '')[-1500:]}" for le in extra[:3])
    assert len(leases) == 30 and all(not le.expired() for le in leases)
    assert len({le.ip for le in leases}) == 30
    assert len(set(addresses)) <= 31  # released addresses are handed out again, lowest first
    assert wait_until(lambda: not links_of(lease_file), 15), links_of(lease_file)
    assert not [p for p in guest_processes() if str(tmp_path).encode() in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_a_mac_keeps_its_address_while_its_lease_lives(template: Template, tmp_path: Path,
                                                       vms: list[SimVM]) -> None:
    first = new_vm(vms, template, tmp_path, "sticky-1")
    ip = first.wait_address()
    first.kill()  # no release: the lease lives on
    other = new_vm(vms, template, tmp_path, "other")
    again = new_vm(vms, template, tmp_path, "sticky-2", mac=first.mac)
    assert again.wait_address() == ip  # the killed VM's lease answers at once: the guest may not have bound yet
    assert other.wait_address() != ip
    # stopped only once each guest's own DHCP client holds its address, so that it has one to give back
    assert [a["ip"] for a in again.hello()["addresses"]] == [ip]
    assert [a["ip"] for a in other.hello()["addresses"]] != [ip]
    assert again.stop() == 0 and other.stop() == 0
    lease_file = tmp_path / "dhcpd_leases"
    logs = {str(vm.mac): vm.log() for vm in (again, other)}
    assert wait_until(lambda: not read_leases(lease_file), 10), "leases of cleanly stopped VMs remain:\n" + "\n".join(
        f"{le.mac} {le.ip}:\n{logs.get(str(le.mac), '')[-3000:]}" for le in read_leases(lease_file))


def test_the_last_release_is_written_even_as_the_network_goes(template: Template, tmp_path: Path,
                                                              vms: list[SimVM]) -> None:
    """With no linger the bridge and dnsmasq go the moment the last VM is gone; the lease that VM gave
    back must still leave the lease file (dnsmasq's script helper finishes before the holder ends)."""
    lease_file = tmp_path / "dhcpd_leases"
    for i in range(3):
        vm = new_vm(vms, template, tmp_path, f"last-{i}", driver_options={"network_linger": 0})
        vm.wait_address()
        assert vm.stop() == 0
        assert wait_until(lambda: not links_of(lease_file), 15)
        assert read_leases(lease_file) == [], vm.log()[-1500:]


def test_a_network_goes_even_when_its_directory_went_first(template: Template, tmp_path: Path,
                                                           vms: list[SimVM]) -> None:
    """A test's or a benchmark's temp dir is removed while the bridge lingers: the bridge still goes."""
    root = tmp_path / "agent"
    vm = new_vm(vms, template, root, "short-lived", driver_options={"network_linger": 1.0})
    vm.wait_address()
    lease_file = root / "dhcpd_leases"
    links = links_of(lease_file)
    assert vm.stop() == 0 and links
    shutil.rmtree(root)  # runners, lease file, the network's runtime directory and its locks
    assert wait_until(lambda: not any(os.path.exists(f"/sys/class/net/{n}") for n in links), 15)
    assert wait_until(lambda: not _cmdline_pids(str(root)), 10), _cmdline_pids(str(root))  # holder, dnsmasq


def test_two_agents_side_by_side_have_their_own_bridge_and_subnet(template: Template, tmp_path: Path,
                                                                   vms: list[SimVM]) -> None:
    one = new_vm(vms, template, tmp_path / "one", "vm")
    two = new_vm(vms, template, tmp_path / "two", "vm")
    ip1, ip2 = ready(one), ready(two)
    assert ip1.rsplit(".", 1)[0] != ip2.rsplit(".", 1)[0]
    l1, l2 = links_of(tmp_path / "one" / "dhcpd_leases"), links_of(tmp_path / "two" / "dhcpd_leases")
    assert len(l1) == len(l2) == 2 and not set(l1) & set(l2)
    assert all(len(name) <= 15 for name in l1 + l2)
    # traffic stays on its own bridge: the host forwards nothing from it, not even to the other agent's
    bridge = next(n for n in l1 if len(n) == 10)
    assert Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").read_text().strip() == "0"
    probe = (f"python3 -c 'import socket; socket.create_connection((\"{ip2}\", {template.meta.ssh_port}), 2)' "
             "&& echo crossed || echo stayed")
    out = guest_run(one, probe)[1]
    assert "stayed" in out and "crossed" not in out, out
    # stopping one agent's VM leaves the other's network alone
    assert one.stop() == 0
    assert wait_until(lambda: not links_of(tmp_path / "one" / "dhcpd_leases"), 15)
    assert links_of(tmp_path / "two" / "dhcpd_leases") == l2 and two.proc is not None and two.proc.poll() is None
    # an explicit subnet that overlaps a network the host has (here: agent two's) is refused, clearly
    clash = new_vm(vms, template, tmp_path / "one", "clash",
                   driver_options={"subnet": ip2.rsplit(".", 1)[0] + ".0/24"})
    assert clash.proc is not None and clash.proc.wait(20) != 0
    assert "overlaps the host's" in clash.log()
    assert two.stop() == 0


def test_a_killed_network_holder_is_replaced_and_its_bridge_swept(template: Template, tmp_path: Path,
                                                                  vms: list[SimVM]) -> None:
    lease_file = tmp_path / "dhcpd_leases"
    first = new_vm(vms, template, tmp_path, "first")
    first.wait_address()
    holder = _holder_pid(tmp_path)
    os.kill(holder, signal.SIGKILL)  # its dnsmasq dies with it (the holder is PID 1 of their namespace)
    assert wait_until(lambda: not _alive(holder) and not _dnsmasq_of(tmp_path), 10)
    second = new_vm(vms, template, tmp_path, "second")  # joins, finds no holder, starts one
    assert second.wait_address()
    assert "its holder is gone; starting a new one" in second.log()
    assert first.stop() == 0 and second.stop() == 0
    assert wait_until(lambda: not links_of(lease_file), 15)
    # a holder killed with no VM left: its bridge stays until the next VM of this agent sweeps it
    third = new_vm(vms, template, tmp_path, "third")
    third.wait_address()
    bridge = [n for n in links_of(lease_file) if len(n) == 10]
    assert third.stop() == 0
    os.kill(_holder_pid(tmp_path), signal.SIGKILL)
    (tmp_path / ".dhcpd_leases.simnet" / "state.json").unlink()  # and its state lost, as after a crash
    time.sleep(0.5)
    assert links_of(lease_file) == bridge
    fourth = new_vm(vms, template, tmp_path, "fourth")
    assert fourth.wait_address()
    assert "swept a dead sim network" in fourth.log()
    assert fourth.stop() == 0
    assert wait_until(lambda: not links_of(lease_file), 15)


# A VM process creating its agent's network (as `vm run` does, through SimNetwork.join), SIGKILLed —
# by the agent or a stopping `shoes-vz up` — before it starts the holder, or while it waits for the
# holder's `ready`; or one that joins and leaves normally (the network then lingers LINGER seconds).
CREATOR = """  # LEASE_FILE HOW [LINGER]
import os, signal, sys
from pathlib import Path
from shoes_vz.vm.drivers import sim_net
from shoes_vz.vm.drivers.sim_options import SimOptions

def sigkill(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "before-the-holder":
    sim_net.SimNetwork._start_holder = sigkill
elif sys.argv[2] == "awaiting-ready":
    sim_net.select.select = sigkill  # _start_holder waits for the holder's line with select()
linger = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
sim_net.SimNetwork(Path(sys.argv[1]), SimOptions(network_linger=linger)).join(print).close()
"""


@pytest.mark.parametrize("moment", ["before-the-holder", "awaiting-ready"])
def test_a_vm_killed_while_it_creates_the_network_leaves_no_link(tmp_path: Path, moment: str) -> None:
    """An interrupted `shoes-vz up` left a bridge: its creator was SIGKILLed after `ip link add`, and
    either no holder had started or the holder's `ready` hit a closed pipe and it died. Now the holder
    makes the bridge and outlives a creator gone, so nothing stays, and the next VM gets a network."""
    require_namespaced()
    lease_file = tmp_path / "dhcpd_leases"

    killed = creator(lease_file, moment)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    runtime = str(tmp_path / ".dhcpd_leases.simnet")
    log = tmp_path / "dhcpd_leases.dhcp.log"
    assert wait_until(lambda: not links_of(lease_file) and not _cmdline_pids(runtime), 15), (
        links_of(lease_file), log.read_text(errors="replace") if log.exists() else "no holder log")
    normal = creator(lease_file, "normally")
    assert normal.returncode == 0 and "sim network svz" in normal.stdout, normal.stdout + normal.stderr
    assert wait_until(lambda: not links_of(lease_file) and not _cmdline_pids(runtime), 15)


def test_a_stack_that_stopped_its_agent_sweeps_what_a_dead_holder_left(tmp_path: Path) -> None:
    """A holder killed with no VM left leaves its bridge to the agent's next VM; `shoes-vz up` stops
    its agent for good, so its LocalStack sweeps it (and leaves a live holder's network alone)."""
    require_namespaced()
    lease_file = tmp_path / "dhcpd_leases"
    stack = LocalStack(tmp_path)
    assert creator(lease_file, "normally", "60").returncode == 0
    asyncio.run(stack.stop())
    assert links_of(lease_file), "a live holder's network was swept"
    holder = _holder_pid(tmp_path)
    os.kill(holder, signal.SIGKILL)
    assert wait_until(lambda: not _alive(holder), 10)
    assert links_of(lease_file)
    asyncio.run(stack.stop())
    assert not links_of(lease_file)
    assert "swept a dead sim network" in (tmp_path / "agent.log").read_text()


def creator(lease_file: Path, how: str, linger: str = "0.5") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CREATOR, str(lease_file), how, linger], capture_output=True,
                          text=True, timeout=60)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _holders_of_netns(netns: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "ns" / "net") == netns:
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _cmdline_pids(needle: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if needle.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _holder_pid(root: Path) -> int:
    pids = [p for p in _cmdline_pids(str(root / ".dhcpd_leases.simnet")) if b"sim_holder" in
            Path(f"/proc/{p}/cmdline").read_bytes() and _comm(p).startswith("python")]
    assert len(pids) == 1, pids
    return pids[0]


def _dnsmasq_of(root: Path) -> list[int]:
    return [p for p in _cmdline_pids(str(root / ".dhcpd_leases.simnet")) if _comm(p) == "dnsmasq"]
