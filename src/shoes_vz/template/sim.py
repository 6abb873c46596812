"""`init-sim`: a sim template (simulated guest: OpenSSH sshd + runner-agent), made as a draft and
frozen by the same code as every other template."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
from pathlib import Path

import asyncssh

from shoes_vz.core.errors import TemplateError
from shoes_vz.core.resources import RESOURCE_TYPES
from shoes_vz.template.draft import new_draft, write_metadata
from shoes_vz.template.freeze import freeze
from shoes_vz.template.metadata import TemplateMetadata
from shoes_vz.template.store import Template, TemplateStore, check_name, check_resource_types


def init_sim(
    templates_dir: Path,
    name: str,
    *,
    resource_types: list[str] | None = None,
    disk_bytes: int = 64 * 1024**3,
    cpu_count: int = 4,
    memory_bytes: int = 8 * 1024**3,
    ssh_port: int = 2222,
    ssh_user: str | None = None,
    guest_root: Path | None = None,
) -> Template:
    """Make a sim template with the seed's layout, frozen read-only.

    The image's sshd host key is generated into `sim/` (0400 once frozen, like every private key in a
    template); freeze pins it. There is no client key: the agent logs in with a certificate of its
    own user CA made for one runner, which the guest's runner-agent is told to trust over the runner
    channel, and the guest serves a per-boot host key from then on (docs/security.md §8–§9). The
    guest sshd listens on `ssh_port` (2222: a host sshd on *:22 would shadow port 22 of a loopback
    guest's 127.100/16).

    The login user (`ssh_user`) defaults to `runner` as root on Linux — the unprivileged user of a
    namespaced guest — and to the current user elsewhere, since a loopback guest's sshd runs as that
    user and can admit only it. `guest_root` is copied into `sim/root/`: files a namespaced guest sees
    layered read-only over the host's (`sim/root/usr/local/bin/x` is the guest's /usr/local/bin/x),
    as a macOS image carries its own tools.
    """
    check_name(name)
    types = check_resource_types(resource_types or list(RESOURCE_TYPES))
    store = TemplateStore(templates_dir)
    if os.path.lexists(store.path(name)):
        raise TemplateError(f"template {store.path(name)} already exists")
    with new_draft(store, name) as tmp:
        with (tmp / "Disk.img").open("wb") as f:
            f.truncate(disk_bytes)  # sparse: the "installed macOS" costs nothing here
        (tmp / "AuxiliaryStorage").write_bytes(os.urandom(64 * 1024))
        (tmp / "HardwareModel.json").write_text(
            json.dumps({"dataRepresentation": "", "driver": "sim"}, indent=2) + "\n")
        sim = tmp / "sim"
        sim.mkdir()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(sim / "ssh_host_ed25519_key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(host_key.export_private_key())
        if guest_root is not None:
            shutil.copytree(guest_root, sim / "root", symlinks=False)
        write_metadata(tmp, TemplateMetadata(
            name=name, driver="sim", cpu_count=cpu_count, memory_bytes=memory_bytes, disk_bytes=disk_bytes,
            resource_types=types, ssh_user=ssh_user or default_ssh_user(), ssh_port=ssh_port, source="sim",
        ))
        (tmp / "README.md").write_text(
            f"# {name}\n\nA shoes-vz **sim** template (simulated guest: OpenSSH sshd + runner-agent).\n"
            "Frozen read-only (its private key 0400); never edit. Make a new template instead.\n")
    # nothing older to replace (checked above), so no runners directory is needed
    return freeze(store, name, runners_dir=None)


def default_ssh_user() -> str:
    return "runner" if sys.platform.startswith("linux") and os.geteuid() == 0 else getpass.getuser()


__all__ = ["default_ssh_user", "init_sim"]
