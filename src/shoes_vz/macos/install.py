"""Install macOS from an IPSW into an empty template draft (`shoes-vz template create`).

The steps (reference §4.4; Apple's sample, tart and Code-Hex/vz do the same):
  1. the restore image: a local .ipsw, or `latest` = the URL `fetchLatestSupported…` names,
     downloaded into the IPSW cache (`ipsw_cache`: resumable, reused by name);
  2. `loadFileURL_completionHandler_` (its handler runs on an arbitrary thread);
  3. requirements: a hardware model this host supports, and the requested CPUs/memory at least the
     image's minimum and within what this host allows (each failure names the limit);
  4. the files: sparse RAW `Disk.img`, `AuxiliaryStorage` (created once, here, for this hardware model;
     rule 9), `HardwareModel.json` (`identity_files`);
  5. a configuration from the same `vz_config.assemble` the runners boot with, a VM on a private
     serial queue (`vz_runtime.SerialQueue`), a `VZMacOSInstaller` made and started on that queue;
     its NSProgress is polled there and fed to `progress` until the completion handler fires. The
     installer VM counts against the host's VM limit: it holds one host VM slot (`vm.host_slots`)
     from before the VM is made until it is stopped; with none free the install stops, resumable.

Contract with the caller:
  * `target` is an existing, empty directory the caller made (a temporary draft). On success it
    holds exactly Disk.img, AuxiliaryStorage and HardwareModel.json; writing TemplateMetadata.json
    and renaming the draft into place are the caller's.
  * On any failure or KeyboardInterrupt the installer is cancelled, the VM stopped, the files made
    here are deleted (so `target` is empty again) and the exception propagates: the caller then
    removes `target` itself. Nothing is written outside `target` except the IPSW cache, where only a
    resumable `NAME.ipsw.part` survives an interrupted download.
  * Errors are `InstallError`s; `.resumable` says whether re-running the same command (after the fix
    its message names) can succeed.

PyObjC is imported lazily (`vz_runtime.import_pyobjc`), so this module imports on Linux.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shoes_vz.core.errors import BundleError, CapacityExhausted
from shoes_vz.core.sizes import format_size
from shoes_vz.macos import ipsw_cache
from shoes_vz.macos.install_errors import (
    RERUN,
    RESTORE_IMAGE_UNUSABLE,
    InstallError,
    from_driver_error,
    from_nserror,
)
from shoes_vz.vm.drivers.vz_config import MIB, MIN_MACOS, assemble, block_device, file_url, nat_network
from shoes_vz.vm.drivers.vz_errors import VZDriverError
from shoes_vz.vm.drivers.vz_host import host_macos, refuse_root
from shoes_vz.vm.drivers.vz_runtime import SerialQueue, import_pyobjc
from shoes_vz.vm.host_slots import HostSlots
from shoes_vz.vm.identity_files import write_data_representation

DISK, AUX_STORAGE, HARDWARE_MODEL = "Disk.img", "AuxiliaryStorage", "HardwareModel.json"
LATEST = "latest"
FETCH_TIMEOUT = 120.0     # asking Apple's catalog for the latest image
LOAD_TIMEOUT = 900.0      # loading (and verifying) a ~15 GB IPSW
CANCEL_TIMEOUT = 60.0     # the installer's handler after progress.cancel()
STOP_TIMEOUT = 60.0
POLL_INTERVAL = 0.5       # how often the installer's NSProgress is read
MIN_GUEST_CPUS = 4        # below this macOS guests freeze often (tart)


class InstallProgress(Protocol):
    """Where the steps report: a phase ("download", "load", "prepare", "install") and its fraction."""

    def update(self, phase: str, fraction: float) -> None: ...


@dataclass(frozen=True)
class InstalledImage:
    macos_build: str
    macos_version: str
    cpu_count: int
    memory_bytes: int
    disk_bytes: int
    ipsw: Path


class _Completion:
    """A completion handler that only records its arguments: nothing in it can raise (rule 4)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.args: tuple[Any, ...] = ()

    def one(self, a: Any) -> None:
        self.args = (a,)
        self.done.set()

    def two(self, a: Any, b: Any) -> None:
        self.args = (a, b)
        self.done.set()

    def wait(self, timeout: float, what: str) -> tuple[Any, ...]:
        if not self.done.wait(timeout):
            raise InstallError(f"{what} did not finish within {timeout:g}s; {RERUN}", resumable=True)
        return self.args


def require_virtualization() -> tuple[Any, Any, Any]:
    """(Virtualization, Foundation, dispatch) on a host that can install macOS guests, else InstallError."""
    try:
        vz, foundation, dispatch, _objc = import_pyobjc("template create")
    except VZDriverError as e:
        raise from_driver_error(e) from None
    try:
        refuse_root("template create")
    except VZDriverError as e:
        raise from_driver_error(e) from None
    host = host_macos()
    if host < MIN_MACOS:
        raise InstallError(f"template create needs macOS {MIN_MACOS[0]}.{MIN_MACOS[1]} or later (this host: "
                           f"{host[0]}.{host[1]})", resumable=False)
    if not vz.VZVirtualMachine.isSupported():
        raise InstallError("this host cannot run VMs (VZVirtualMachine.isSupported() is false: no hardware "
                           "virtualization, e.g. inside a VM)", resumable=False)
    return vz, foundation, dispatch


def install_macos(target: Path, *, ipsw: str, cpu_count: int, memory_bytes: int, disk_bytes: int,
                  cache_dir: Path, progress: InstallProgress, host_slots: HostSlots) -> InstalledImage:
    """Fill the empty directory `target` with an installed macOS (see the module docstring)."""
    vz, foundation, dispatch = require_virtualization()
    if not target.is_dir() or any(target.iterdir()):
        raise InstallError(f"{target} must be an existing, empty directory", resumable=False)
    if disk_bytes <= 0 or disk_bytes % 512:
        raise InstallError(f"disk size {disk_bytes} bytes: a RAW disk image must be a positive multiple of 512",
                           resumable=False)
    made: list[Path] = []
    try:
        path, cached = _restore_image_file(vz, ipsw, cache_dir, progress)
        image = _load(vz, foundation, path, cached, progress)
        hardware = _check_requirements(vz, image, path, cpu_count, memory_bytes)
        progress.update("prepare", 0.0)
        cfg = _prepare(vz, foundation, target, made, hardware, cpu_count, memory_bytes, disk_bytes)
        progress.update("prepare", 1.0)
        with _host_slot(host_slots, target):
            _run_installer(vz, dispatch, foundation, cfg, path, progress, label=f"shoes-vz.install.{target.name}")
        return InstalledImage(macos_build=str(image.buildVersion()),
                              macos_version=_version_text(image.operatingSystemVersion()),
                              cpu_count=cpu_count, memory_bytes=memory_bytes, disk_bytes=disk_bytes, ipsw=path)
    except VZDriverError as e:
        _remove(made)
        raise from_driver_error(e) from None
    except OSError as e:
        _remove(made)
        full = e.errno == errno.ENOSPC
        raise InstallError(f"{e}" + (f"; free space on that volume, then {RERUN}" if full else ""),
                           resumable=full) from None
    except BaseException:
        _remove(made)
        raise


def _host_slot(slots: HostSlots, target: Path) -> Any:
    try:
        return slots.take(f"template create {target}")
    except CapacityExhausted as e:
        raise InstallError(f"{e}; then {RERUN}", resumable=True) from None


def _remove(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _version_text(version: Any) -> str:
    major, minor, patch = version.majorVersion, version.minorVersion, version.patchVersion
    return f"{major}.{minor}" + (f".{patch}" if patch else "")


# -- 1, 2: the restore image ---------------------------------------------------------------------------
def _restore_image_file(vz: Any, ipsw: str, cache_dir: Path, progress: InstallProgress) -> tuple[Path, bool]:
    """(local .ipsw, whether it lives in the cache)."""
    if ipsw != LATEST:
        path = Path(ipsw).expanduser()
        ipsw_cache.check_ipsw(path)
        return path.resolve(), False  # the framework mishandles symlinked paths (§1.8)
    fetched = _Completion()
    vz.VZMacOSRestoreImage.fetchLatestSupportedWithCompletionHandler_(fetched.two)
    image, err = fetched.wait(FETCH_TIMEOUT, "asking Apple for the latest supported restore image")
    if image is None:
        raise from_nserror(err, "ask Apple for the latest restore image this host supports")
    url = str(image.URL().absoluteString())

    def downloaded(done: int, total: int | None) -> None:
        progress.update("download", done / total if total else 0.0)

    return ipsw_cache.fetch(url, cache_dir, downloaded), True


def _load(vz: Any, foundation: Any, path: Path, cached: bool, progress: InstallProgress) -> Any:
    progress.update("load", 0.0)
    loaded = _Completion()
    vz.VZMacOSRestoreImage.loadFileURL_completionHandler_(file_url(foundation, path), loaded.two)
    image, err = loaded.wait(LOAD_TIMEOUT, f"loading {path}")
    if image is None:
        e = from_nserror(err, f"load the restore image {path}")
        if cached and e.code in RESTORE_IMAGE_UNUSABLE:
            ipsw_cache.forget(path)
            e.args = (f"{e}; deleted the cached copy, so the next run downloads it again",)
        raise e
    progress.update("load", 1.0)
    return image


# -- 3: requirements ----------------------------------------------------------------------------------
def _check_requirements(vz: Any, image: Any, path: Path, cpu_count: int, memory_bytes: int) -> Any:
    """The hardware model to install for, after checking the request against image and host."""
    what = f"macOS {_version_text(image.operatingSystemVersion())} ({image.buildVersion()})"
    req = image.mostFeaturefulSupportedConfiguration()
    hardware = req.hardwareModel() if req is not None else None
    if hardware is None or not hardware.isSupported():
        raise InstallError(f"this host cannot run {what} from {path}: it supports none of the image's hardware "
                           f"models; update macOS on the host, then {RERUN} (or use an older IPSW)",
                           resumable=True)
    min_cpu, min_memory = int(req.minimumSupportedCPUCount()), int(req.minimumSupportedMemorySize())
    # tart gives macOS guests at least 4 CPUs "because otherwise VMs are frequently freezing"
    cpu_floor, cpu_why = (MIN_GUEST_CPUS, "macOS guests with fewer freeze often (tart's floor)") \
        if min_cpu < MIN_GUEST_CPUS else (min_cpu, f"the minimum {what} needs")
    limits = vz.VZVirtualMachineConfiguration
    max_cpu, max_memory = int(limits.maximumAllowedCPUCount()), int(limits.maximumAllowedMemorySize())
    problems = []
    if cpu_count < cpu_floor:
        problems.append(f"--cpu {cpu_count} is below {cpu_floor} CPUs: {cpu_why}")
    if cpu_count > max_cpu:
        problems.append(f"--cpu {cpu_count} is more than this host allows a VM ({max_cpu})")
    memory, low, high = format_size(memory_bytes), format_size(min_memory), format_size(max_memory)
    if memory_bytes < min_memory:
        problems.append(f"--memory {memory} is below the minimum of {low} {what} needs")
    if memory_bytes > max_memory:
        problems.append(f"--memory {memory} is more than this host allows a VM ({high})")
    if memory_bytes % MIB:
        problems.append(f"--memory {memory_bytes} bytes is not a whole number of MiB")
    if problems:
        raise InstallError("; ".join(problems), resumable=False)
    return hardware


# -- 4: the files -------------------------------------------------------------------------------------
def _prepare(vz: Any, foundation: Any, target: Path, made: list[Path], hardware: Any, cpu_count: int,
             memory_bytes: int, disk_bytes: int) -> Any:
    """Disk.img, AuxiliaryStorage, HardwareModel.json in `target` (each listed in `made` before it is
    created), and the validated installer configuration."""
    disk, aux_path, hw_path = target / DISK, target / AUX_STORAGE, target / HARDWARE_MODEL
    made.append(disk)
    with disk.open("xb") as f:
        f.truncate(disk_bytes)  # sparse RAW (§2.4): costs nothing until the installer writes
    made.append(aux_path)
    aux, err = vz.VZMacAuxiliaryStorage.alloc().initCreatingStorageAtURL_hardwareModel_options_error_(
        file_url(foundation, aux_path), hardware, 0, None)  # 0: never overwrite
    if aux is None:
        raise from_nserror(err, f"create {aux_path}")
    made.append(hw_path)
    try:
        write_data_representation(hw_path, bytes(hardware.dataRepresentation()))
    except BundleError as e:
        raise InstallError(str(e), resumable=False) from None
    platform = vz.VZMacPlatformConfiguration.new()
    platform.setHardwareModel_(hardware)
    platform.setAuxiliaryStorage_(aux)
    # The installer needs an identity, but the template keeps none: every runner gets a fresh one.
    platform.setMachineIdentifier_(vz.VZMacMachineIdentifier.new())
    return assemble(vz, host=host_macos(), platform=platform, cpu_count=cpu_count, memory_bytes=memory_bytes,
                    disk=block_device(vz, foundation, disk), network=nat_network(vz, None))


# -- 5: the installer ---------------------------------------------------------------------------------
def _run_installer(vz: Any, dispatch: Any, foundation: Any, cfg: Any, ipsw: Path, progress: InstallProgress,
                   *, label: str) -> None:
    queue = SerialQueue(dispatch, label)
    url = file_url(foundation, ipsw)
    vm = queue.call(lambda: vz.VZVirtualMachine.alloc().initWithConfiguration_queue_(cfg, queue.queue))
    installer = queue.call(lambda: vz.VZMacOSInstaller.alloc().initWithVirtualMachine_restoreImageURL_(vm, url))
    finished = _Completion()
    queue.call(lambda: installer.installWithCompletionHandler_(finished.one))
    shown = 0.0
    progress.update("install", shown)
    try:
        while not finished.done.wait(POLL_INTERVAL):
            fraction = float(queue.call(lambda: installer.progress().fractionCompleted()))
            if fraction > shown:  # the bar only moves forward
                shown = min(fraction, 1.0)
                progress.update("install", shown)
    except BaseException:  # Ctrl-C, a wedged queue, a failing progress sink: leave no VM installing
        _cancel(queue, installer, finished)
        _stop(vz, queue, vm)
        raise
    (err,) = finished.args
    _stop(vz, queue, vm)
    if err is not None:
        raise from_nserror(err, "install macOS")
    progress.update("install", 1.0)


def _cancel(queue: SerialQueue, installer: Any, finished: _Completion) -> None:
    if finished.done.is_set():
        return
    with contextlib.suppress(Exception):  # we are already failing; the original error is what counts
        queue.call(lambda: installer.progress().cancel())
        finished.done.wait(CANCEL_TIMEOUT)


def _stop(vz: Any, queue: SerialQueue, vm: Any) -> None:
    """Stop the VM if the installer left it running (the state after install is unverified, §10.6)."""
    stopped = _Completion()

    def stop_if_running() -> bool:
        if not vm.canStop():
            return False
        vm.stopWithCompletionHandler_(stopped.one)
        return True

    with contextlib.suppress(Exception):
        if queue.call(stop_if_running):
            stopped.done.wait(STOP_TIMEOUT)


__all__ = ["LATEST", "InstallError", "InstallProgress", "InstalledImage", "install_macos",
           "require_virtualization"]
