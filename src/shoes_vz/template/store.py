"""The template directory: finding templates, refusing unsafe ones, and making sim templates."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from shoes_vz.core.errors import TemplateError
from shoes_vz.core.resources import RESOURCE_TYPES
from shoes_vz.template.metadata import FILE_NAME, TemplateMetadata

DIGESTED = ("HardwareModel.json", "AuxiliaryStorage")
NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Template:
    path: Path
    meta: TemplateMetadata

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def disk(self) -> Path:
        return self.path / "Disk.img"

    @property
    def aux_storage(self) -> Path:
        return self.path / "AuxiliaryStorage"

    @property
    def hardware_model(self) -> Path:
        return self.path / "HardwareModel.json"

    @property
    def sim_dir(self) -> Path:
        return self.path / "sim"

    @property
    def sim_client_key(self) -> Path:
        return self.sim_dir / "id_ed25519"

    def check(self) -> None:
        """Refuse an unpinned, writable or tampered template (DESIGN §9)."""
        if not self.meta.pinned:
            raise TemplateError(f"template {self.name}: its guest SSH host key is not pinned (ssh_host_key is "
                                f"empty; a draft from `template create`?); freeze it first: "
                                f"shoes-vz template freeze {self.name}")
        for p in [self.path, *self.path.iterdir()]:
            if p.is_symlink():
                raise TemplateError(f"template {self.name}: {p} is a symlink")
            if p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
                raise TemplateError(
                    f"template {self.name}: {p} is writable; templates are frozen read-only "
                    f"(fix: chmod -R a-w {self.path})"
                )
        for name, digest in self.meta.digests.items():
            if sha256_file(self.path / name) != digest:
                raise TemplateError(f"template {self.name}: {name} does not match its recorded digest")


class TemplateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def list(self) -> list[Template]:
        if not self.directory.is_dir():
            return []
        found = []
        for p in sorted(self.directory.iterdir()):
            if (p / FILE_NAME).is_file():
                found.append(Template(p, TemplateMetadata.read(p)))
        return found

    def get(self, name: str) -> Template:
        path = self.directory / name
        if not (path / FILE_NAME).is_file():
            raise TemplateError(f"no template named {name!r} in {self.directory}")
        return Template(path, TemplateMetadata.read(path))

    def for_resource_type(self, resource_type: str) -> Template | None:
        for t in self.list():
            if resource_type in t.meta.resource_types:
                return t
        return None


def _freeze(path: Path) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(path, 0o555)


def init_sim(
    templates_dir: Path,
    name: str,
    *,
    resource_types: list[str] | None = None,
    disk_bytes: int = 64 * 1024**3,
    authorized_key: str | None = None,
    cpu_count: int = 4,
    memory_bytes: int = 8 * 1024**3,
    ssh_port: int = 2222,
) -> Template:
    """Make a sim template with the seed's layout and freeze it read-only.

    The guest's sshd host key and (unless `authorized_key` is given) a client key for the agent are
    generated into `sim/`; the host key's public half is pinned in the metadata. The guest sshd
    listens on `ssh_port` (2222: a host sshd on *:22 would shadow port 22 of 127.100/16).
    """
    if not name or not set(name) <= NAME_OK or name.startswith("."):
        raise TemplateError(f"template name {name!r} is invalid: use letters, digits, '.', '_', '-'")
    types = resource_types or list(RESOURCE_TYPES)
    bad = [t for t in types if t not in RESOURCE_TYPES]
    if bad:
        raise TemplateError(f"unknown resource types {bad}; expected some of {', '.join(RESOURCE_TYPES)}")
    final = templates_dir / name
    if final.exists():
        raise TemplateError(f"template {final} already exists")
    templates_dir.mkdir(parents=True, exist_ok=True)
    tmp = templates_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        with (tmp / "Disk.img").open("wb") as f:
            f.truncate(disk_bytes)  # sparse: the "installed macOS" costs nothing here
        (tmp / "AuxiliaryStorage").write_bytes(os.urandom(64 * 1024))
        (tmp / "HardwareModel.json").write_text(
            json.dumps({"dataRepresentation": "", "driver": "sim"}, indent=2) + "\n"
        )
        sim = tmp / "sim"
        sim.mkdir()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_private_key(str(sim / "ssh_host_ed25519_key"))
        host_pub = host_key.export_public_key().decode().strip()
        if authorized_key is None:
            client = asyncssh.generate_private_key("ssh-ed25519", comment="shoes-vz-sim")
            client.write_private_key(str(sim / "id_ed25519"))
            authorized_key = client.export_public_key().decode().strip()
        (sim / "authorized_keys").write_text(authorized_key.strip() + "\n")
        meta = TemplateMetadata(
            name=name,
            driver="sim",
            cpu_count=cpu_count,
            memory_bytes=memory_bytes,
            disk_bytes=disk_bytes,
            resource_types=types,
            ssh_user=getpass.getuser(),
            ssh_port=ssh_port,
            ssh_host_key=host_pub,
            digests={n: sha256_file(tmp / n) for n in DIGESTED},
        )
        (tmp / FILE_NAME).write_text(meta.to_json())
        (tmp / "README.md").write_text(
            f"# {name}\n\nA shoes-vz **sim** template (simulated guest: OpenSSH sshd + runner-agent).\n"
            "Frozen read-only; never edit. Make a new template instead.\n"
        )
        _freeze(tmp)
        os.rename(tmp, final)
    except BaseException:
        if tmp.exists():
            for root, dirs, _ in os.walk(tmp):
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o755)
            os.chmod(tmp, 0o755)
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Template(final, meta)
