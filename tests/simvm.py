"""Sim VMs at the VM-process level: a hand-made bundle and a real `python -m shoes_vz.vm.process`,
without server or agent (tests and benchmarks that start many VMs, or attack one from another).

There is no shared key into a guest: `SimVM.login` does what the agent does — hello over the VM's
runner channel (through its `vm run`) with a CA of its own, then SSH with a certificate for this VM's
runner id, pinned to the host key the channel named."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from shoes_vz.agent.ssh_ca import UserCA, source_address_toward
from shoes_vz.stack import sim_links
from shoes_vz.template import Template
from shoes_vz.vm import control
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

LINK_PREFIX = "svz"
TEST_CA = UserCA(asyncssh.generate_private_key("ssh-ed25519", comment="shoes-vz tests' CA"), Path("/nonexistent"))


def say_hello(bundle: Bundle, runner_id: str, ca: UserCA = TEST_CA, *, reannounce: bool = False,
              nonce: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
    """The guest's answer to the agent's hello (retried while it boots); raises AssertionError after `timeout`."""
    import asyncio
    import secrets

    line = json.dumps({"shoes_vz": "hello", "version": 1, "runner_id": runner_id,
                       "nonce": nonce or secrets.token_hex(16), "user_ca": ca.public_line, "time": time.time(),
                       "reannounce": reannounce})
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            reply = asyncio.run(control.request(bundle.control_socket, "channel", timeout=10, line=line, io_timeout=5))
        except (OSError, TimeoutError, ValueError) as e:
            reply = {"ok": False, "error": str(e)}
        if reply.get("ok"):
            answer: dict[str, Any] = json.loads(reply["answer"])
            if answer.get("addresses") or answer.get("shoes_vz") != "welcome":
                return answer
            last = "no address yet"
        else:
            last = str(reply.get("error"))
        time.sleep(0.05)
    raise AssertionError(f"no answer on {bundle.path.name}'s runner channel within {timeout}s: {last}")


async def guest_login(ip: str, port: int, user: str, runner_id: str, host_key: str | asyncssh.SSHKey,
                      ca: UserCA = TEST_CA, ttl: float = 120.0, **kw: Any) -> asyncssh.SSHClientConnection:
    """SSH into a guest as the agent does: a certificate of `ca` for `runner_id`, the pinned `host_key`."""
    cred = ca.issue(runner_id, ttl, source_address_toward(ip))
    key = asyncssh.import_public_key(host_key) if isinstance(host_key, str) else host_key
    return await asyncssh.connect(ip, port, username=user, client_keys=[cred.client_key],
                                  known_hosts=([key], [], []), agent_path=None, config=None, **kw)


async def runner_run(agent: Any, runner: Any, command: str) -> tuple[int, str]:
    """Run `command` in a live runner's guest, logged in with the agent's own CA (a test's way in)."""
    meta = runner.spec.template.meta
    assert runner.identity is not None, "the runner's channel has not answered yet"
    async with await guest_login(runner.ip, meta.ssh_port, meta.ssh_user, runner.runner_id, runner.identity.host_key,
                                 agent.ca) as conn:
        r = await conn.run(command, check=False)
        return int(r.exit_status or 0), f"{r.stdout}{r.stderr}"


def project_links() -> list[str]:
    """Links this project makes (bridges and veths named svz…, aliased `shoes-vz sim …`)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir("/sys/class/net")):
            try:
                alias = Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
            except OSError:
                alias = ""
            if name.startswith(LINK_PREFIX) or alias.startswith("shoes-vz"):
                found.append(name)
    return found


def links_of(lease_file: Path) -> list[str]:
    """Links of the sim network whose lease file is `lease_file` (their alias names it)."""
    return sim_links(lease_file)


def named_netns() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def guest_processes() -> list[int]:
    """Processes of any namespaced sim guest still alive (their PID 1 is sim_init)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if b"shoes_vz.vm.drivers.sim_init" in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
    return out


def wait_until(check: Any, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@dataclass
class SimVM:
    """One `vm run` of a sim bundle cloned (sparsely) from `template`."""

    template: Template
    runners: Path
    lease_file: Path
    name: str
    mac: MACAddress = field(default_factory=MACAddress.random_local)
    driver_options: dict[str, Any] = field(default_factory=dict)
    notify_url: str = "auto:9"
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def bundle(self) -> Bundle:
        return Bundle(self.runners / f"{self.name}.bundle")

    def start(self) -> SimVM:
        b = self.bundle
        shutil.rmtree(b.path, ignore_errors=True)
        b.path.mkdir(parents=True)
        with open(b.disk, "wb") as f:
            f.truncate(self.template.disk.stat().st_size)  # a sparse "clone": nothing reads it
        shutil.copyfile(self.template.aux_storage, b.aux_storage)
        shutil.copyfile(self.template.hardware_model, b.hardware_model)
        b.update_metadata(runner_id=self.name, runner_name=self.name, mac_address=str(self.mac),
                          template=self.template.name, template_dir=str(self.template.path), driver="sim",
                          notify_url=self.notify_url, ssh_port=self.template.meta.ssh_port,
                          ssh_user=self.template.meta.ssh_user, runner_agent_port=8080)
        self.started = time.monotonic()
        with open(b.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoes_vz.vm.process", str(b.path), "--driver", "sim",
                 "--lease-file", str(self.lease_file), "--stop-grace", "2",
                 # the test's own slots, never the host's default (other suites may run beside this one)
                 "--host-slots", str(self.runners.parent / "vm-slots"), "--host-limit", "64",
                 "--driver-options", json.dumps(self.driver_options)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        return self

    def hello(self, ca: UserCA = TEST_CA, **kw: Any) -> dict[str, Any]:
        return say_hello(self.bundle, self.name, ca, **kw)

    def run(self, command: str, ca: UserCA = TEST_CA) -> tuple[int, str]:
        """Run `command` in the guest over SSH as its user, logged in as the agent would: (exit status, output)."""
        import asyncio

        answer = self.hello(ca)
        ip = self.lease_ip() or answer["addresses"][0]["ip"]

        async def go() -> tuple[int, str]:
            async with await guest_login(ip, self.template.meta.ssh_port, self.template.meta.ssh_user, self.name,
                                         answer["host_key"], ca) as conn:
                r = await conn.run(command, check=False)
                return int(r.exit_status or 0), f"{r.stdout}{r.stderr}"

        return asyncio.run(go())

    def lease_ip(self) -> str:
        le = newest_lease_for(read_leases(self.lease_file), self.mac)
        return le.ip if le else ""

    def wait_address(self, timeout: float = 20.0) -> str:
        ip = wait_until(lambda: self.lease_ip() or (self.proc is not None and self.proc.poll() is not None), timeout)
        if not isinstance(ip, str) or not ip:
            raise AssertionError(f"{self.name}: no lease within {timeout}s\n{self.log()[-3000:]}")
        return ip

    def wait_listening(self, timeout: float = 20.0) -> None:
        ok = wait_until(lambda: "sshd_listening_at" in self.bundle.read_metadata(), timeout)
        if not ok:
            raise AssertionError(f"{self.name}: sshd never listened\n{self.log()[-3000:]}")

    def status(self) -> dict[str, Any]:
        import asyncio

        return asyncio.run(control.request(self.bundle.control_socket, "status", timeout=5))

    def stop(self, timeout: float = 15.0) -> int:
        """A clean shutdown through the control socket, as the agent asks for one."""
        assert self.proc is not None
        if self.proc.poll() is None:
            import asyncio

            with contextlib.suppress(OSError, TimeoutError, ValueError):
                asyncio.run(control.request(self.bundle.control_socket, "stop", timeout=5))
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.bundle.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def veths(self) -> list[str]:
        """Host-side links whose alias names this VM's bundle."""
        out = []
        for name in project_links():
            with contextlib.suppress(OSError):
                if Path(f"/sys/class/net/{name}/ifalias").read_text().strip().endswith(" " + str(self.bundle.path)):
                    out.append(name)
        return out


def dhcp_log_count(lease_file: Path, pattern: str) -> int:
    try:
        text = (lease_file.parent / f"{lease_file.name}.dhcp.log").read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(pattern, text))
