"""Starting and stopping `vm run` processes (one per runner, each in its own session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from shoes_vz.config import AgentSettings
from shoes_vz.template.use_lock import UseLock
from shoes_vz.vm import control
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.host_slots import HostSlots


def host_slots(settings: AgentSettings) -> HostSlots:
    """The host-wide VM slots every VM this agent's settings start takes one of."""
    return HostSlots(settings.effective_vm_slots_dir(), settings.host_vm_limit)


async def spawn(
    bundle: Bundle, driver: str, *, lease_file: Path, boot_delay: float, stop_grace: float, host_slots: HostSlots,
    restore_delay: float = 0.0, restore_timeout: float = 60.0, live_timeout: float = 30.0, hold: UseLock | None = None,
    driver_options: dict[str, Any] | None = None,
) -> asyncio.subprocess.Process:
    """Start the bundle's VM process. It inherits `hold`, the template's use lock, and keeps it for
    its whole life (template/use_lock.py); the caller closes its own copy once this returns."""
    # `python -m shoes_vz.vm.process` is `shoes-vz vm run` without the CLI's import cost
    with open(bundle.log_file, "ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoes_vz.vm.process", str(bundle.path),
            "--driver", driver, "--lease-file", str(lease_file),
            "--boot-delay", str(boot_delay), "--restore-delay", str(restore_delay), "--stop-grace", str(stop_grace),
            "--host-slots", str(host_slots.directory), "--host-limit", str(host_slots.limit),
            "--restore-timeout", str(restore_timeout), "--live-timeout", str(live_timeout),
            "--driver-options", json.dumps(driver_options or {}),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # an agent crash must not take its VMs down
            pass_fds=(hold.fd,) if hold is not None else (),
        )


async def wait_gone(bundle: Bundle, proc: asyncio.subprocess.Process | None, timeout: float) -> bool:
    """Wait until the vm process has exited (and released the lock); True if it did in time."""
    deadline = time.monotonic() + timeout
    if proc is not None:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            return False
    while bundle.is_running():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def stop(bundle: Bundle, proc: asyncio.subprocess.Process | None, grace: float) -> None:
    """Graceful stop through the control socket, then SIGKILL to the whole session; then whatever the
    guest started is killed — also when the VM process was already dead (killed, crashed): its
    session may outlive it, and a guest's processes are found by the bundle they belong to."""
    pid = proc.pid if proc is not None and proc.returncode is None else bundle.lock_holder()
    if pid and pid > 0:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            await control.request(bundle.control_socket, "stop", timeout=2.0)
        if not await wait_gone(bundle, proc, grace + 2.0):
            _kill_session(pid)
            await wait_gone(bundle, proc, 5.0)
    session = proc.pid if proc is not None else pid
    if session and session > 0:
        _kill_session(session)  # leftovers of a guest in the VM process's session, if any
    await asyncio.to_thread(bundle.kill_strays)


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
