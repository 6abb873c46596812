"""`template freeze --boot`: read a guest's SSH host key off a scratch boot of the draft.

The key is what runners will be pinned to (DESIGN §7), so it is taken from the guest itself — the
same way an operator would `ssh-keyscan` it — and never trusted from anywhere else.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncssh

from shoes_vz.agent.scratch import ScratchError, scratch_vm
from shoes_vz.config import AgentSettings
from shoes_vz.template import Template, TemplateMetadata


async def probe_host_key(settings: AgentSettings, template_dir: Path) -> str:
    """The guest's host public key (OpenSSH one-line form) of the template or draft at `template_dir`."""
    meta = TemplateMetadata.read(template_dir)
    async with scratch_vm(settings, Template(template_dir, meta), "hostkey") as vm:
        key = await _host_key_of(vm.ip, meta.ssh_port, settings.ip_to_ssh_timeout)
    return key


async def _host_key_of(ip: str, port: int, timeout: float) -> str:
    """Retry until the guest's sshd answers (it may still be starting) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            key = await asyncio.wait_for(asyncssh.get_server_host_key(ip, port, config=None), 2.0)
        except (OSError, TimeoutError, asyncssh.Error) as e:
            last = e
            await asyncio.sleep(0.05)
            continue
        if key is not None:
            return key.export_public_key().decode().strip()
    raise ScratchError(f"no SSH server answered at {ip}:{port} within {timeout:.0f}s: is Remote Login on in "
                       f"the guest? ({last})")
