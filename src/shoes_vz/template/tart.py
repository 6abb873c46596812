"""`import-tart`: a tart VM directory becomes a draft in our layout.

    tart VM dir                         draft (.drafts/NAME/)
    config.json  hardwareModel (b64) →  HardwareModel.json {"dataRepresentation": …}
                 cpuCount, memorySize → TemplateMetadata.json (unless overridden)
                 ecid, macAddress       dropped: every runner gets a fresh identity
    disk.img                         →  Disk.img          (clone)
    nvram.bin                        →  AuxiliaryStorage  (clone)

Keys as tart's `VMConfig.swift`/`Platform/Darwin.swift` write them (`os` and `arch` default to
darwin/arm64 there when absent). While importing, a shared fcntl lock is held on config.json: tart
takes an exclusive one for the whole life of `tart run`, so a running VM is refused and a VM cannot
start half-way through the clones.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.draft import Draft, new_draft, write_metadata
from shoes_vz.template.metadata import TemplateMetadata
from shoes_vz.template.store import TemplateStore, check_resource_types
from shoes_vz.vm.clone import CloneCopyWarning, CopyProgress, clone_file, filesystem_type, mount_point
from shoes_vz.vm.identity_files import write_data_representation

FILES = {"disk.img": "Disk.img", "nvram.bin": "AuxiliaryStorage"}


@dataclass(frozen=True)
class TartConfig:
    hardware_model: bytes
    cpu_count: int
    memory_bytes: int

    @classmethod
    def read(cls, vm_dir: Path) -> TartConfig:
        path = vm_dir / "config.json"
        try:
            raw: Any = json.loads(path.read_text())
        except FileNotFoundError:
            raise TemplateError(f"{vm_dir} is not a tart VM: {path} is missing") from None
        except (OSError, ValueError) as e:
            raise TemplateError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise TemplateError(f"{path}: expected a JSON object")
        os_name, arch = raw.get("os", "darwin"), raw.get("arch", "arm64")
        if os_name != "darwin":
            raise TemplateError(f"{vm_dir} is a {os_name!r} tart VM; only macOS (darwin) VMs can be templates")
        if arch != "arm64":
            raise TemplateError(f"{vm_dir} is an {arch!r} tart VM; macOS templates need arm64 (Apple Silicon)")
        encoded = raw.get("hardwareModel")
        if not isinstance(encoded, str) or not encoded:
            raise TemplateError(f"{path}: 'hardwareModel' is missing or empty (a macOS tart VM has one)")
        try:
            model = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise TemplateError(f"{path}: 'hardwareModel' is not valid base64 ({e})") from None
        if not model:
            raise TemplateError(f"{path}: 'hardwareModel' decodes to nothing")
        return cls(model, _positive(raw, "cpuCount", path), _positive(raw, "memorySize", path))


def _positive(raw: dict[str, Any], key: str, path: Path) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TemplateError(f"{path}: {key!r} must be a positive integer (got {value!r})")
    return value


@contextmanager
def _not_running(vm_dir: Path) -> Iterator[None]:
    """Hold a shared lock on config.json, or refuse when `tart run` holds its exclusive one."""
    path = vm_dir / "config.json"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise TemplateError(f"the tart VM {vm_dir} is running (`tart run` holds the lock on {path}); "
                                    f"stop it first (`tart stop {vm_dir.name}`)") from None
            raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _volume(path: Path) -> str:
    try:
        return f"{mount_point(path)} ({filesystem_type(path)})"
    except OSError:
        return f"{path} (volume unknown)"


def import_tart(
    src: Path,
    store: TemplateStore,
    name: str,
    *,
    cpu_count: int | None = None,
    memory_bytes: int | None = None,
    resource_types: list[str] | None = None,
    copy: bool = False,
    progress: CopyProgress | None = None,
) -> Draft:
    """Make `.drafts/NAME` from the tart VM in `src` (see the module docstring).

    The files are cloned; a tart VM on another volume than the templates is an error unless `copy`
    (a full, slow copy that reports `progress`). Nothing is left in `.drafts` on any failure.
    """
    src = src.resolve()
    types = check_resource_types(resource_types or [])
    if not src.is_dir():
        raise TemplateError(f"{src} is not a directory (expected a tart VM, e.g. ~/.tart/vms/NAME)")
    config = TartConfig.read(src)
    for tart_name in FILES:
        if not (src / tart_name).is_file():
            raise TemplateError(f"{src} is not a complete tart VM: {tart_name} is missing")
    store.drafts_dir.mkdir(parents=True, exist_ok=True)
    if not copy and os.stat(src).st_dev != os.stat(store.drafts_dir).st_dev:
        raise TemplateError(
            f"cannot clone {src} into {store.drafts_dir}: the tart VM is on {_volume(src)} and the templates "
            f"on {_volume(store.drafts_dir)}; a clone needs one volume. Fix: move the tart VM onto the "
            f"templates volume (e.g. TART_HOME there) or the templates onto its volume, or pass --copy "
            f"for a full copy (slow; costs the disk's full size)")
    previous = store.path(name)
    parent = TemplateMetadata.read(previous) if (previous / "TemplateMetadata.json").is_file() else None
    with _not_running(src), new_draft(store, name) as tmp:
        total = sum((src / n).stat().st_size for n in FILES)
        done = 0
        for tart_name, ours in FILES.items():
            size = (src / tart_name).stat().st_size
            sub = None if progress is None else (lambda d, _t, base=done: progress(base + d, total))
            with warnings.catch_warnings():  # the copy is what the caller asked for; it is logged once
                warnings.simplefilter("ignore", CloneCopyWarning)
                clone_file(src / tart_name, tmp / ours, allow_copy=copy, progress=sub)
            done += size
        write_data_representation(tmp / "HardwareModel.json", config.hardware_model)
        meta = TemplateMetadata(
            name=name, driver="vz",
            version=str(int(parent.version) + 1) if parent and parent.version.isdigit() else "1",
            parent_version=parent.version if parent else "",
            cpu_count=cpu_count or config.cpu_count, memory_bytes=memory_bytes or config.memory_bytes,
            disk_bytes=(tmp / "Disk.img").stat().st_size, resource_types=types,
            source=f"tart:{src}",
        )
        write_metadata(tmp, meta)
        (tmp / "README.md").write_text(
            f"# {name}\n\nA shoes-vz macOS template imported from the tart VM {src}.\n"
            f"Frozen templates are read-only; change one with `shoes-vz template edit {name}`.\n")
    return Draft.open(store, name)


__all__ = ["TartConfig", "import_tart"]
