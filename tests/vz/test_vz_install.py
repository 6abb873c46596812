"""Installing macOS into a template draft (`shoes_vz.macos.install`) against the generated fake.

The IPSW download for `--ipsw latest` goes over real HTTP to a stdlib server in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakevz import FakeVZ, fake_hardware_model_data, fake_ipsw_bytes
from ipswserver import NAME, IpswServer

from shoes_vz.macos import install
from shoes_vz.macos.install import InstallError, install_macos
from shoes_vz.vm.digest import sha256_file
from shoes_vz.vm.host_slots import HostSlots
from shoes_vz.vm.identity_files import read_data_representation

GIB = 1 << 30
EXPECTED_FILES = {"Disk.img", "AuxiliaryStorage", "HardwareModel.json"}


class Recorder:
    """An InstallProgress that remembers every update (and can play Ctrl-C at a fraction)."""

    def __init__(self, interrupt_at: float | None = None) -> None:
        self.seen: list[tuple[str, float]] = []
        self.interrupt_at = interrupt_at

    def update(self, phase: str, fraction: float) -> None:
        self.seen.append((phase, fraction))
        if self.interrupt_at is not None and phase == "install" and fraction >= self.interrupt_at:
            raise KeyboardInterrupt

    def fractions(self, phase: str) -> list[float]:
        return [f for p, f in self.seen if p == phase]

    def phases(self) -> list[str]:
        return list(dict.fromkeys(p for p, _ in self.seen))


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "POLL_INTERVAL", 0.002)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    t = tmp_path / "drafts" / ".t.tmp-1"
    t.mkdir(parents=True)
    return t


@pytest.fixture
def ipsw(tmp_path: Path) -> Path:
    p = tmp_path / "UniversalMac_26.5_25F71_Restore.ipsw"
    p.write_bytes(fake_ipsw_bytes(min_cpu=2, min_memory=4 * GIB))
    return p


@pytest.fixture
def server() -> Iterator[IpswServer]:
    s = IpswServer(fake_ipsw_bytes(padding=3 << 20))  # a few 1 MiB chunks
    yield s
    s.close()


def run(target: Path, ipsw: str | Path, cache: Path, progress: Recorder | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {"cpu_count": 4, "memory_bytes": 8 * GIB, "disk_bytes": 64 * GIB}
    args.update(kw)
    args.setdefault("host_slots", HostSlots(cache.parent / "vm-slots", 2))
    return install_macos(target, ipsw=str(ipsw), cache_dir=cache, progress=progress or Recorder(), **args)


def failure(target: Path, ipsw: str | Path, cache: Path, **kw: Any) -> InstallError:
    with pytest.raises(InstallError) as e:
        run(target, ipsw, cache, **kw)
    assert list(target.iterdir()) == [], "a failed install must leave the draft empty"
    return e.value


# -- the happy path -------------------------------------------------------------------------------------
def test_install_from_a_local_ipsw(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path) -> None:
    import Virtualization as vz

    progress = Recorder()
    image = run(target, ipsw, tmp_path / "cache", progress)

    assert {p.name for p in target.iterdir()} == EXPECTED_FILES
    disk = (target / "Disk.img").stat()
    assert disk.st_size == 64 * GIB and disk.st_blocks * 512 < (1 << 20)  # sparse
    with (target / "Disk.img").open("rb") as f:
        assert f.read(10) == b"FAKE-MACOS"  # the installer wrote to it
    assert (target / "AuxiliaryStorage").read_bytes().startswith(b"FAKEAUX1:")
    data = read_data_representation(target / "HardwareModel.json")
    assert data == fake_hardware_model_data()
    assert vz.VZMacHardwareModel.alloc().initWithDataRepresentation_(data).isSupported()  # round-trips

    assert (image.macos_build, image.macos_version) == ("25F71", "26.5")
    assert (image.cpu_count, image.memory_bytes, image.disk_bytes) == (4, 8 * GIB, 64 * GIB)
    assert image.ipsw == ipsw.resolve()

    steps = progress.fractions("install")
    assert steps == sorted(steps) and steps[-1] == 1.0 and len(set(steps)) > 1
    assert progress.phases() == ["load", "prepare", "install"]
    assert fake_vz.vms[-1]._state == vz.VZVirtualMachineStateStopped  # never left running
    assert not (tmp_path / "cache").exists()  # a local IPSW is not copied into the cache


def test_the_installer_configuration_is_the_runner_device_set(fake_vz: FakeVZ, target: Path, ipsw: Path,
                                                              tmp_path: Path) -> None:
    run(target, ipsw, tmp_path / "cache", cpu_count=5, memory_bytes=6 * GIB)
    cfg = fake_vz.vms[-1]._cfg._props
    assert (cfg["CPUCount"], cfg["memorySize"]) == (5, 6 * GIB)
    assert "entropyDevices" not in cfg and len(cfg["socketDevices"]) == 1  # the suspendable set
    assert cfg["storageDevices"][0]._props["attachment"]._props["URL"].path() == str((target / "Disk.img").resolve())
    assert cfg["networkDevices"][0]._props["MACAddress"]._mac  # random, locally administered
    assert cfg["platform"]._props["auxiliaryStorage"]._props["URL"].path().endswith("AuxiliaryStorage")


# -- --ipsw latest: download over real HTTP ----------------------------------------------------------------
def test_latest_downloads_into_the_cache_and_reuses_it(fake_vz: FakeVZ, server: IpswServer, tmp_path: Path) -> None:
    fake_vz.knobs.latest_url = server.url
    cache = tmp_path / "cache"
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    progress = Recorder()
    image = run(first, "latest", cache, progress)

    cached = cache / NAME
    assert image.ipsw == cached and cached.read_bytes() == server.payload
    meta = json.loads((cache / f"{NAME}.json").read_text())
    assert meta == {"url": server.url, "size": len(server.payload), "sha256": sha256_file(cached)}
    assert sorted(p.name for p in cache.iterdir()) == [NAME, f"{NAME}.json"]  # no .part left
    downloaded = progress.fractions("download")
    assert downloaded == sorted(downloaded) and downloaded[-1] == 1.0
    assert progress.phases() == ["download", "load", "prepare", "install"]

    run(second, "latest", cache)
    assert server.range_headers == [None], "the cached IPSW is reused by name, not downloaded again"
    assert {p.name for p in second.iterdir()} == EXPECTED_FILES


def install_latest_then_empty(fake_vz: FakeVZ, server: IpswServer, target: Path, tmp_path: Path) -> Path:
    """One `latest` install that leaves the IPSW in the cache; `target` is emptied for the next run."""
    fake_vz.knobs.latest_url = server.url
    cache = tmp_path / "cache"
    run(target, "latest", cache)
    for p in target.iterdir():
        p.unlink()
    return cache


def test_a_cached_ipsw_that_changed_size_is_downloaded_again(fake_vz: FakeVZ, server: IpswServer, target: Path,
                                                             tmp_path: Path) -> None:
    cache = install_latest_then_empty(fake_vz, server, target, tmp_path)
    with (cache / NAME).open("r+b") as f:
        f.truncate(1000)  # e.g. a disk-full copy, or someone replaced it
    run(target, "latest", cache)
    assert server.range_headers == [None, None]
    assert (cache / NAME).read_bytes() == server.payload


def test_a_dropped_download_resumes_with_a_range_request(fake_vz: FakeVZ, server: IpswServer, target: Path,
                                                        tmp_path: Path) -> None:
    fake_vz.knobs.latest_url = server.url
    cache = tmp_path / "cache"
    server.drop_after = 1_500_000
    e = failure(target, "latest", cache)
    assert e.resumable and "re-run the same command to resume" in str(e)
    part = cache / f"{NAME}.part"
    assert part.stat().st_size == 1_500_000 and not (cache / NAME).exists()

    run(target, "latest", cache)
    assert server.range_headers == [None, "bytes=1500000-"]
    assert (cache / NAME).read_bytes() == server.payload and not part.exists()


def test_a_server_without_ranges_restarts_the_download(fake_vz: FakeVZ, server: IpswServer, target: Path,
                                                      tmp_path: Path) -> None:
    fake_vz.knobs.latest_url = server.url
    cache = tmp_path / "cache"
    server.drop_after, server.honour_ranges = 1_000_000, False
    failure(target, "latest", cache)
    run(target, "latest", cache)
    assert server.range_headers == [None, "bytes=1000000-"]
    assert (cache / NAME).read_bytes() == server.payload


def test_a_complete_part_is_not_downloaded_again(fake_vz: FakeVZ, server: IpswServer, target: Path,
                                                tmp_path: Path) -> None:
    fake_vz.knobs.latest_url = server.url
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(server.payload)  # a run killed between the last byte and the rename
    run(target, "latest", cache)
    assert server.range_headers == [f"bytes={len(server.payload)}-"]
    assert (cache / NAME).read_bytes() == server.payload


def test_a_download_that_is_not_an_ipsw_is_dropped(fake_vz: FakeVZ, server: IpswServer, target: Path,
                                                  tmp_path: Path) -> None:
    fake_vz.knobs.latest_url = server.url
    server.payload = b"<html>captive portal</html>"
    e = failure(target, "latest", tmp_path / "cache")
    assert "did not deliver an IPSW" in str(e) and e.resumable
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_http_errors(fake_vz: FakeVZ, server: IpswServer, target: Path, tmp_path: Path) -> None:
    fake_vz.knobs.latest_url = server.url + ".missing"
    e = failure(target, "latest", tmp_path / "cache")
    assert "HTTP 404" in str(e) and not e.resumable
    fake_vz.knobs.latest_url = "http://127.0.0.1:1/" + NAME  # nothing listens on port 1
    e = failure(target, "latest", tmp_path / "cache")
    assert e.resumable and "check the network" in str(e)
    fake_vz.knobs.latest_url = "ftp://example.com/" + NAME
    assert "only http(s) URLs" in str(failure(target, "latest", tmp_path / "cache"))


def test_a_damaged_cached_ipsw_is_forgotten(fake_vz: FakeVZ, server: IpswServer, target: Path,
                                           tmp_path: Path) -> None:
    cache = install_latest_then_empty(fake_vz, server, target, tmp_path)
    fake_vz.knobs.load_error = ("VZErrorDomain", 10005, "The restore image is invalid.")
    e = failure(target, "latest", cache)
    assert "VZErrorInvalidRestoreImage" in str(e) and "deleted the cached copy" in str(e) and e.resumable
    assert list(cache.iterdir()) == []


# -- errors, each with what to do ---------------------------------------------------------------------------
@pytest.mark.parametrize(("knob", "error", "needle", "resumable"), [
    ("fetch_error", ("NSURLErrorDomain", -1009, "The Internet connection appears to be offline."),
     "check the connection", True),
    ("fetch_error", ("VZErrorDomain", 10001, "The restore image catalog failed to load."),
     "VZErrorRestoreImageCatalogLoadFailed", True),
    ("fetch_error", ("VZErrorDomain", 10003, "No supported restore images in catalog."),
     "update macOS on the host", False),
])
def test_latest_fetch_errors(fake_vz: FakeVZ, target: Path, tmp_path: Path, knob: str,
                             error: tuple[str, int, str], needle: str, resumable: bool) -> None:
    setattr(fake_vz.knobs, knob, error)
    e = failure(target, "latest", tmp_path / "cache")
    assert needle in str(e) and e.resumable is resumable
    assert "latest restore image" in str(e)


@pytest.mark.parametrize(("knob", "error", "needles", "resumable"), [
    ("load_error", ("VZErrorDomain", 10004, "The restore image failed to load."),
     ["could not load the restore image", "VZErrorRestoreImageLoadFailed", "download it again"], True),
    ("install_error", ("VZErrorDomain", 10006, "The installation requires a software update."),
     ["VZErrorInstallationRequiresUpdate", "update macOS on the host (Software Update)"], True),
    ("install_error", ("VZErrorDomain", 10007, "The installation failed."),
     ["VZErrorInstallationFailed", "it starts over"], True),
    ("install_error", ("VZErrorDomain", 8, "Out of disk space."),
     ["VZErrorOutOfDiskSpace", "free space where --templates-dir lives"], True),
    ("install_error", ("VZErrorDomain", 6, "The number of virtual machines exceeds the limit."),
     ["maximum of 2 macOS guests"], True),
    ("install_error", ("VZErrorDomain", 1, "An internal error occurred."),  # tart#921: root, no GUI login
     ["VZErrorInternal", "runs as root", "unlocked login keychain", "docs/macos-host.md"], True),
    ("aux_error", ("NSCocoaErrorDomain", 640, "Not enough space."),
     ["could not create", "AuxiliaryStorage", "free space"], True),
])
def test_errors_name_the_cause_and_the_fix(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path, knob: str,
                                          error: tuple[str, int, str], needles: list[str], resumable: bool) -> None:
    setattr(fake_vz.knobs, knob, error)
    e = failure(target, ipsw, tmp_path / "cache")
    for needle in needles:
        assert needle in str(e)
    assert e.resumable is resumable
    assert all(vm._state == 0 for vm in fake_vz.vms)  # no VM left running after a failed install


def test_missing_entitlement(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path) -> None:
    fake_vz.knobs.entitlement = False
    e = failure(target, ipsw, tmp_path / "cache")
    assert "shoes-vz sign-python" in str(e) and not e.resumable


def test_bad_local_ipsw_files(fake_vz: FakeVZ, target: Path, tmp_path: Path) -> None:
    e = failure(target, tmp_path / "nope.ipsw", tmp_path / "cache")
    assert "does not exist" in str(e) and not e.resumable
    text = tmp_path / "notes.ipsw"
    text.write_text("not a zip")
    assert "not an IPSW" in str(failure(target, text, tmp_path / "cache"))
    assert "is a directory" in str(failure(target, tmp_path, tmp_path / "cache"))
    zip_but_not_restore = tmp_path / "other.ipsw"
    zip_but_not_restore.write_bytes(b"PK\x03\x04 some other zip")
    e = failure(target, zip_but_not_restore, tmp_path / "cache")
    assert "VZErrorInvalidRestoreImage" in str(e) and "download it again" in str(e)
    assert zip_but_not_restore.exists(), "a local IPSW is never deleted"


# -- requirements ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "needle"), [
    ({"cpu_count": 1}, "--cpu 1 is below 4 CPUs: macOS guests with fewer freeze often (tart's floor)"),
    ({"cpu_count": 3}, "--cpu 3 is below 4 CPUs"),  # the image allows 2, tart's floor does not
    ({"memory_bytes": 2 * GIB}, "--memory 2 GiB is below the minimum of 4 GiB macOS 26.5 (25F71) needs"),
    ({"cpu_count": 64}, "--cpu 64 is more than this host allows a VM (8)"),
    ({"memory_bytes": 64 * GIB}, "--memory 64 GiB is more than this host allows a VM (16 GiB)"),
    ({"memory_bytes": 8 * GIB + 1}, "is not a whole number of MiB"),
])
def test_requirements_name_the_limit(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path,
                                     kw: dict[str, int], needle: str) -> None:
    e = failure(target, ipsw, tmp_path / "cache", **kw)
    assert needle in str(e) and not e.resumable
    assert fake_vz.vms == []  # refused before any VM was made


def test_an_image_needing_more_cpus_than_the_floor_names_its_own_minimum(fake_vz: FakeVZ, target: Path,
                                                                         tmp_path: Path) -> None:
    big = tmp_path / "big.ipsw"
    big.write_bytes(fake_ipsw_bytes(min_cpu=6))
    e = failure(target, big, tmp_path / "cache", cpu_count=4)
    assert "--cpu 4 is below 6 CPUs: the minimum macOS 26.5 (25F71) needs" in str(e)


def test_unsupported_hardware_model(fake_vz: FakeVZ, target: Path, tmp_path: Path) -> None:
    unsupported = tmp_path / "new.ipsw"
    unsupported.write_bytes(fake_ipsw_bytes(build="27A1", version=(27, 0, 0), supported=False))
    e = failure(target, unsupported, tmp_path / "cache")
    assert "cannot run macOS 27.0 (27A1)" in str(e) and "update macOS on the host" in str(e)
    fake_vz.knobs.hardware_supported = False
    e = failure(target, tmp_path / "new.ipsw", tmp_path / "cache")
    assert "supports none of the image's hardware models" in str(e)


@pytest.mark.parametrize(("knobs", "needle"), [
    ({"host": (13, 6)}, "needs macOS 14.0 or later (this host: 13.6)"),
    ({"vz_supported": False}, "cannot run VMs"),
])
def test_host_that_cannot_install(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path,
                                  knobs: dict[str, Any], needle: str) -> None:
    for k, v in knobs.items():
        setattr(fake_vz.knobs, k, v)
    assert needle in str(failure(target, ipsw, tmp_path / "cache"))


def test_target_must_be_an_empty_directory(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path) -> None:
    (target / "stray").write_text("x")
    with pytest.raises(InstallError, match="empty directory"):
        run(target, ipsw, tmp_path / "cache")
    assert (target / "stray").exists()
    with pytest.raises(InstallError, match="empty directory"):
        run(tmp_path / "missing", ipsw, tmp_path / "cache")
    (target / "stray").unlink()
    with pytest.raises(InstallError, match="multiple of 512"):
        run(target, ipsw, tmp_path / "cache", disk_bytes=1000)


# -- Ctrl-C -----------------------------------------------------------------------------------------------
def test_ctrl_c_cancels_the_installer_and_leaves_nothing(fake_vz: FakeVZ, target: Path, ipsw: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(target, ipsw, tmp_path / "cache", Recorder(interrupt_at=0.25))
    assert list(target.iterdir()) == []
    vm = fake_vz.vms[-1]
    assert vm._installer._progress.isCancelled() and vm._state == 0  # cancelled, VM stopped


# -- the host-wide VM count and the host user --------------------------------------------------------------
def test_the_installer_vm_takes_a_host_slot(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path) -> None:
    slots = HostSlots(tmp_path / "vm-slots", 2)
    seen: list[list[str]] = []
    original = fake_vz.behaviour[("VZMacOSInstaller", "installWithCompletionHandler:")]

    def install(fake: FakeVZ, inst: Any, handler: Any) -> None:
        seen.append([h.what for h in slots.holders()])
        original(fake, inst, handler)

    fake_vz.behaviour[("VZMacOSInstaller", "installWithCompletionHandler:")] = install
    run(target, ipsw, tmp_path / "cache", host_slots=slots)
    assert seen == [[f"template create {target}"]]
    assert slots.holders() == [], "released once the installer VM stopped"


def test_no_free_host_slot_stops_the_install_resumable(fake_vz: FakeVZ, target: Path, ipsw: Path,
                                                       tmp_path: Path) -> None:
    slots = HostSlots(tmp_path / "vm-slots", 1)
    with slots.take("vm run /r/r1.bundle"):
        e = failure(target, ipsw, tmp_path / "cache", host_slots=slots)
    assert "all 1 host VM slots are held" in str(e) and "vm run /r/r1.bundle" in str(e) and e.resumable
    assert fake_vz.vms == [], "no installer VM was made"


def test_template_create_refuses_root(fake_vz: FakeVZ, target: Path, ipsw: Path, tmp_path: Path) -> None:
    fake_vz.knobs.euid = 0
    e = failure(target, ipsw, tmp_path / "cache")
    assert "template create refuses to run as root" in str(e) and "Code=1" in str(e)
