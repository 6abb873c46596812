"""A scratch VM for the maintenance path: a clone of a template (or draft) booted outside any runner.

`template warm` saves one as a slot; `template freeze --boot` reads the guest's SSH host key off
one. It is built in the runners directory (one volume with the templates, short control-socket
paths) under a name the agent never adopts, and whatever happens it is stopped and removed on exit
unless the caller moved its directory away. `login` does to it what a runner's start does: hello
over the runner channel, then SSH with a certificate of the agent's CA, pinned to the host key the
channel named.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from shoes_vz.agent import ssh, supervisor
from shoes_vz.agent.runner_channel import Identity, RunnerChannel
from shoes_vz.agent.ssh_ca import UserCA, source_address_toward
from shoes_vz.agent.vm_files import fill_bundle
from shoes_vz.agent.warm import slot_macs
from shoes_vz.config import AgentSettings
from shoes_vz.core.errors import RunnerFailed, ShoesVzError
from shoes_vz.template import Template
from shoes_vz.template.modes import remove_tree
from shoes_vz.template.use_lock import UseLock
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.exit_status import describe
from shoes_vz.vm.identity import new_mac
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

SCRATCH_SUFFIX = ".building"


class ScratchError(ShoesVzError):
    """The scratch VM did not come up; the message carries the tail of its log."""


@dataclass
class ScratchVM:
    bundle: Bundle
    proc: asyncio.subprocess.Process | None
    mac: MACAddress
    ip: str = ""
    runner_id: str = ""


def scratch_leftovers(runners_dir: Path) -> list[Path]:
    """Scratch bundles of interrupted maintenance runs (no live VM holds them)."""
    if not runners_dir.is_dir():
        return []
    return sorted(p for p in runners_dir.glob(f"*{SCRATCH_SUFFIX}") if not Bundle(p).is_running())


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  vm log:\n    " + "\n    ".join(text) if text else ""


def _live_macs(runners_dir: Path) -> set[MACAddress]:
    found = set()
    for _, meta in Bundle.live_in(runners_dir):
        with contextlib.suppress(ValueError):
            if meta and meta.get("mac_address"):
                found.add(MACAddress.parse(str(meta["mac_address"])))
    return found


@contextlib.asynccontextmanager
async def scratch_vm(settings: AgentSettings, template: Template, label: str, *,
                     saveable: bool = False) -> AsyncIterator[ScratchVM]:
    """Boot a clone of `template` with a fresh identity; yields once its DHCP lease names its address.
    `saveable`: the VM is to be saved (a warm slot), so its driver checks it can be before booting."""
    s = settings
    s.runners_dir.mkdir(parents=True, exist_ok=True)
    ident = secrets.token_hex(4)
    bundle = Bundle(s.runners_dir / f"{label}-{ident}{SCRATCH_SUFFIX}")
    mac = await asyncio.to_thread(lambda: new_mac(_live_macs(s.runners_dir)
                                                  | slot_macs(s.templates_dir)))
    vm = ScratchVM(bundle, None, mac, runner_id=f"{label}-{ident}")
    bundle.path.mkdir()
    use: UseLock | None = None
    try:
        use = await asyncio.to_thread(UseLock.take, template.path)  # freeze waits for this VM to be gone
        await asyncio.to_thread(fill_bundle, bundle, template, None, allow_copy=s.allow_copy)
        meta = template.meta
        await asyncio.to_thread(
            bundle.update_metadata, runner_id=vm.runner_id, runner_name=f"{label} {ident}",
            mac_address=str(mac), template=meta.name, template_dir=str(template.path), driver=s.driver,
            notify_url="", ssh_port=meta.ssh_port, ssh_user=meta.ssh_user, runner_agent_port=s.runner_agent_port,
            cpu_count=meta.cpu_count, memory_bytes=meta.memory_bytes, created_at=time.time(), saveable=saveable,
        )
        vm.proc = await supervisor.spawn(bundle, s.driver, lease_file=s.lease_file, boot_delay=s.sim_boot_delay,
                                         stop_grace=s.stop_grace, host_slots=supervisor.host_slots(s), hold=use,
                                         driver_options=s.driver_options)
        use.close()
        vm.ip = await _wait_lease(s, vm.proc, mac)
        yield vm
    except (ShoesVzError, OSError, TimeoutError) as e:
        cls = type(e) if isinstance(e, ScratchError) else ScratchError  # keep a caller's subclass
        raise cls(f"{e or type(e).__name__}{log_tail(bundle.log_file)}") from e
    finally:
        if use is not None:
            use.close()
        if bundle.path.exists():
            if vm.proc is not None and vm.proc.returncode is None or bundle.is_running():
                await supervisor.stop(bundle, vm.proc, 0.0)
            await asyncio.to_thread(remove_tree, bundle.path)


async def login(settings: AgentSettings, vm: ScratchVM, template: Template
                ) -> tuple[Identity, asyncssh.SSHClientConnection]:
    """Hello over the scratch VM's runner channel, then SSH in with a certificate for it: the template
    must be able to do what every runner of it will (docs/building-templates.md §2)."""
    s, meta = settings, template.meta
    ca = await asyncio.to_thread(UserCA.load_or_create, s.state_dir)
    channel = RunnerChannel(vm.bundle, vm.runner_id, vm.mac, s.lease_file, ca.public_line, dict,
                            s.restore_announce_timeout)
    try:
        ident = await channel.identify(s.boot_to_ip_timeout)
    except RunnerFailed as e:
        raise ScratchError(f"{e}: is the runner-agent (with --channel) installed in the template? "
                           "(docs/building-templates.md §2)") from e
    cred = ca.issue(vm.runner_id, s.ssh_cert_ttl, source_address_toward(ident.ip))
    try:
        conn = await ssh.wait_ready(ident.ip, meta.ssh_port, meta.ssh_user, cred.client_key, ident.host_key,
                                    s.ip_to_ssh_timeout)
    except RunnerFailed as e:
        raise ScratchError(f"{e}: does the guest's sshd trust the runner-agent's files (TrustedUserCAKeys, "
                           "AuthorizedPrincipalsFile; docs/building-templates.md §2)?") from e
    return ident, conn


async def _wait_lease(s: AgentSettings, proc: asyncio.subprocess.Process, mac: MACAddress) -> str:
    deadline = time.monotonic() + s.boot_to_ip_timeout
    while True:
        if proc.returncode is not None:
            raise ScratchError(f"the VM exited while booting: {describe(proc.returncode)}")
        lease = newest_lease_for(await asyncio.to_thread(read_leases, s.lease_file), mac)
        if lease is not None:
            return lease.ip
        if time.monotonic() > deadline:
            raise ScratchError(f"no DHCP lease for {mac} within boot_to_ip_timeout ({s.boot_to_ip_timeout:g}s; "
                               f"{s.lease_file})")
        await asyncio.sleep(0.05)
