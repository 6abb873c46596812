"""`import-tart`: a tart VM directory (synthetic, with tart's config.json keys) becomes a draft."""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from xfs import extents, require_xfs, xfs_reflink_mount

from shoes_vz.core.errors import CloneError, TemplateError
from shoes_vz.template import TemplateMetadata, TemplateStore, freeze, import_tart, verify
from shoes_vz.vm.clone import can_reflink, mount_point
from shoes_vz.vm.identity_files import read_data_representation

tart_mod = importlib.import_module("shoes_vz.template.tart")
MODEL = b"\x01\x02 a VZMacHardwareModel dataRepresentation \xff"
ECID = base64.b64encode(b"an ecid blob").decode()
MAC = "7e:aa:bb:cc:dd:ee"
GIB = 1024**3


def make_tart_vm(directory: Path, disk_bytes: int = GIB, **config: Any) -> Path:
    """A tart VM dir as tart 2.x writes it (VMConfig.swift / Platform/Darwin.swift keys)."""
    directory.mkdir(parents=True)
    cfg: dict[str, Any] = {
        "version": 1, "os": "darwin", "arch": "arm64", "cpuCountMin": 4, "cpuCount": 6,
        "memorySizeMin": 4 * GIB, "memorySize": 12 * GIB, "macAddress": MAC,
        "display": {"width": 1024, "height": 768}, "sync": "full",
        "ecid": ECID, "hardwareModel": base64.b64encode(MODEL).decode(),
    }
    cfg.update(config)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    (directory / "config.json").write_text(json.dumps(cfg))
    with open(directory / "disk.img", "wb") as f:
        f.truncate(disk_bytes)
        f.write(os.urandom(1 << 20))
        f.seek(disk_bytes // 2)
        f.write(os.urandom(1 << 20))
    (directory / "nvram.bin").write_bytes(os.urandom(128 << 10))
    return directory


def _drafts(store: TemplateStore) -> list[str]:
    return sorted(os.listdir(store.drafts_dir)) if store.drafts_dir.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(tmp_path / "templates")


@pytest.fixture
def copy_here(tmp_path: Path) -> bool:
    """On a volume that cannot clone (ext4 /tmp) the non-XFS tests need --copy."""
    return not can_reflink(tmp_path)


def test_import_maps_tart_to_our_layout(store: TemplateStore, tmp_path: Path, copy_here: bool) -> None:
    src = make_tart_vm(tmp_path / "vms" / "sonoma")
    d = import_tart(src, store, "sonoma", copy=copy_here)
    assert d.path == store.draft_path("sonoma")
    assert sorted(os.listdir(d.path)) == ["AuxiliaryStorage", "Disk.img", "HardwareModel.json", "README.md",
                                          "TemplateMetadata.json"]
    assert (d.path / "Disk.img").read_bytes() == (src / "disk.img").read_bytes()
    assert (d.path / "AuxiliaryStorage").read_bytes() == (src / "nvram.bin").read_bytes()
    assert read_data_representation(d.path / "HardwareModel.json") == MODEL
    m = d.meta
    assert (m.driver, m.cpu_count, m.memory_bytes, m.disk_bytes) == ("vz", 6, 12 * GIB, GIB)
    assert (m.version, m.parent_version, m.ssh_host_key, m.frozen_at) == ("1", "", "", None)
    assert m.source == f"tart:{src}"
    # the tart VM's identity is not kept: every runner gets a fresh one
    text = "".join(p.read_text(errors="replace") for p in d.path.iterdir() if p.suffix in (".json", ".md"))
    assert ECID not in text and MAC not in text
    # an unpinned draft is not a template: freeze pins it, then it verifies
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    t = freeze(store, "sonoma", runners_dir=tmp_path / "runners", host_key=key)
    assert verify(t.path).ok and t.meta.source == f"tart:{src}"


def test_import_overrides_and_next_version(store: TemplateStore, tmp_path: Path, copy_here: bool) -> None:
    src = make_tart_vm(tmp_path / "vm", os=None, arch=None)  # tart's defaults: darwin, arm64
    d = import_tart(src, store, "mac", cpu_count=2, memory_bytes=4 * GIB, resource_types=["small"], copy=copy_here)
    assert (d.meta.cpu_count, d.meta.memory_bytes, d.meta.resource_types) == (2, 4 * GIB, ["small"])
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    freeze(store, "mac", runners_dir=tmp_path / "runners", host_key=key)
    d2 = import_tart(src, store, "mac", copy=copy_here)
    assert (d2.meta.version, d2.meta.parent_version) == ("2", "1")
    with pytest.raises(TemplateError, match="already exists"):
        import_tart(src, store, "mac", copy=copy_here)
    with pytest.raises(TemplateError, match="unknown resource types"):
        import_tart(src, store, "other", resource_types=["huge"], copy=copy_here)
    assert _drafts(store) == ["mac"]


BAD_CONFIGS = [
    ({"os": "linux"}, "'linux' tart VM; only macOS"),
    ({"arch": "amd64"}, "'amd64' tart VM; macOS templates need arm64"),
    ({"hardwareModel": None}, "'hardwareModel' is missing"),
    ({"hardwareModel": "!!not base64!!"}, "'hardwareModel' is not valid base64"),
    ({"hardwareModel": ""}, "'hardwareModel' is missing or empty"),
    ({"cpuCount": "4"}, "'cpuCount' must be a positive integer"),
    ({"memorySize": 0}, "'memorySize' must be a positive integer"),
    ({"cpuCount": True}, "'cpuCount' must be a positive integer"),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS)
def test_bad_tart_configs_are_refused(store: TemplateStore, tmp_path: Path, config: dict[str, Any],
                                      message: str) -> None:
    src = make_tart_vm(tmp_path / "vm", **config)
    with pytest.raises(TemplateError, match=message):
        import_tart(src, store, "mac", copy=True)
    assert _drafts(store) == []


def test_malformed_or_missing_files_are_refused(store: TemplateStore, tmp_path: Path) -> None:
    src = make_tart_vm(tmp_path / "vm")
    cases = [
        (lambda: (src / "config.json").write_text("{oops"), "config.json: not valid JSON"),
        (lambda: (src / "config.json").write_text("[1, 2]"), "expected a JSON object"),
        (lambda: (src / "config.json").unlink(), "is not a tart VM: .*config.json is missing"),
    ]
    original = (src / "config.json").read_text()
    for breakage, message in cases:
        breakage()
        with pytest.raises(TemplateError, match=message):
            import_tart(src, store, "mac", copy=True)
        (src / "config.json").write_text(original)
    for name in ("disk.img", "nvram.bin"):
        moved = src / f"{name}.away"
        (src / name).rename(moved)
        with pytest.raises(TemplateError, match=f"not a complete tart VM: {name} is missing"):
            import_tart(src, store, "mac", copy=True)
        moved.rename(src / name)
    with pytest.raises(TemplateError, match="is not a directory"):
        import_tart(tmp_path / "nope", store, "mac", copy=True)
    with pytest.raises(TemplateError, match="invalid"):
        import_tart(src, store, "../evil", copy=True)
    assert _drafts(store) == []


@pytest.fixture
def tart_run_lock() -> Iterator[Any]:
    """Hold config.json's lock from another process the way `tart run` does (PIDLock: F_SETLK, F_WRLCK)."""
    procs: list[subprocess.Popen[str]] = []

    def hold(config: Path) -> None:
        code = ("import fcntl, os, sys\n"
                f"fd = os.open({str(config)!r}, os.O_RDWR)\n"
                "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nprint('locked', flush=True)\nsys.stdin.read()\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_running_tart_vm_is_refused(store: TemplateStore, tmp_path: Path, tart_run_lock: Any,
                                      copy_here: bool) -> None:
    src = make_tart_vm(tmp_path / "vm")
    tart_run_lock(src / "config.json")
    with pytest.raises(TemplateError, match=r"tart VM .* is running .*tart stop vm"):
        import_tart(src, store, "mac", copy=True)
    assert _drafts(store) == []


def test_import_holds_the_tart_lock_while_cloning(store: TemplateStore, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, copy_here: bool) -> None:
    """While we clone, `tart run` cannot take its lock (so the VM cannot start half-way)."""
    src = make_tart_vm(tmp_path / "vm")
    probe = ("import fcntl, os, sys\n"
             f"fd = os.open({str(src / 'config.json')!r}, os.O_RDWR)\n"
             "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(3)\n")
    results: list[int] = []
    real = tart_mod.clone_file

    def clone_and_probe(*a: Any, **kw: Any) -> Any:
        results.append(subprocess.run([sys.executable, "-c", probe]).returncode)
        return real(*a, **kw)

    monkeypatch.setattr(tart_mod, "clone_file", clone_and_probe)
    import_tart(src, store, "mac", copy=copy_here)
    assert results == [3, 3]
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0  # released afterwards


def test_no_clone_no_copy_is_a_clear_error(no_clone_dir: Path) -> None:
    store = TemplateStore(no_clone_dir / "templates")
    src = make_tart_vm(no_clone_dir / "vm")
    with pytest.raises(CloneError, match="does not support copy-on-write"):
        import_tart(src, store, "mac")
    assert _drafts(store) == []


# -- on a real XFS reflink volume ----------------------------------------------------------------------


@pytest.fixture
def xfs() -> Iterator[Path]:
    require_xfs()
    with xfs_reflink_mount(size_gib=2) as mnt:
        yield mnt


def test_xfs_import_clones_and_shares_extents(xfs: Path) -> None:
    src = make_tart_vm(xfs / "tart" / "vm", disk_bytes=64 * GIB)
    store = TemplateStore(xfs / "templates")
    d = import_tart(src, store, "mac")
    for ours, theirs in (("Disk.img", "disk.img"), ("AuxiliaryStorage", "nvram.bin")):
        mine, orig = extents(d.path / ours), extents(src / theirs)
        assert mine and all(e.shared for e in mine), ours
        assert [(e.logical, e.physical) for e in mine] == [(e.logical, e.physical) for e in orig]
    assert (d.path / "Disk.img").stat().st_size == 64 * GIB
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    t = freeze(store, "mac", runners_dir=xfs / "runners", host_key=key)
    assert verify(t.path).ok


def test_xfs_template_on_another_volume(xfs: Path, tmp_path: Path) -> None:
    src = make_tart_vm(tmp_path / "vm")  # ext4 (or tmpfs) /tmp; templates on the XFS mount
    store = TemplateStore(xfs / "templates")
    with pytest.raises(TemplateError) as ei:
        import_tart(src, store, "mac")
    msg = str(ei.value)
    assert f"{mount_point(tmp_path)} (" in msg and f"{xfs} (xfs)" in msg, msg
    assert "one volume" in msg and "--copy" in msg
    assert _drafts(store) == []
    seen: list[tuple[int, int]] = []
    d = import_tart(src, store, "mac", copy=True, progress=lambda done, total: seen.append((done, total)))
    assert (d.path / "Disk.img").read_bytes() == (src / "disk.img").read_bytes()
    total = (src / "disk.img").stat().st_size + (src / "nvram.bin").stat().st_size
    assert seen and seen[-1] == (total, total)
    assert (d.path / "Disk.img").stat().st_blocks * 512 < 16 << 20, "the copy stays sparse"


@pytest.mark.parametrize("failure", [CloneError("injected: the second clone failed"), KeyboardInterrupt()])
def test_xfs_interrupted_import_leaves_nothing(xfs: Path, monkeypatch: pytest.MonkeyPatch,
                                               failure: BaseException) -> None:
    src = make_tart_vm(xfs / "tart" / "vm")
    store = TemplateStore(xfs / "templates")
    real = tart_mod.clone_file
    calls: list[Path] = []

    def fail_second(s: Path, d: Path, **kw: Any) -> Any:
        calls.append(d)
        if len(calls) == 2:
            raise failure
        return real(s, d, **kw)

    monkeypatch.setattr(tart_mod, "clone_file", fail_second)
    with pytest.raises(type(failure)):
        import_tart(src, store, "mac")
    assert len(calls) == 2 and not calls[0].exists()
    assert _drafts(store) == []
    assert not store.path("mac").exists()
    # and the import works afterwards
    monkeypatch.setattr(tart_mod, "clone_file", real)
    assert TemplateMetadata.read(import_tart(src, store, "mac").path).name == "mac"
