"""Sim VMs at the VM-process level: a hand-made bundle and a real `python -m shoes_vz.vm.process`,
without server or agent (tests and benchmarks that start many VMs, or attack one from another)."""

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

from shoes_vz.stack import sim_links
from shoes_vz.template import Template
from shoes_vz.vm import control
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

LINK_PREFIX = "svz"


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
                 "--host-slots", str(self.runners.parent / "vm-slots"), "--host-limit", "16",
                 "--driver-options", json.dumps(self.driver_options)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        return self

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
