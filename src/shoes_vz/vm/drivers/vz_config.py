"""The macOS guest configuration, built from a runner bundle (reference §2, DESIGN §5–§6).

Every function takes the already-imported `Virtualization` (`vz`) and `Foundation` modules: this file
imports no PyObjC itself, so it loads on Linux and the tests hand it the generated fakes.

Argument-less VZ objects are made with `.new()`, never `.alloc().init()`: PyObjC marks `init`
NS_UNAVAILABLE on the abstract bases (VZPlatformConfiguration, VZBootLoader, ...) and that may
propagate to the concrete subclasses, while `new` resolves to `+[NSObject new]` (reference §1.5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import BundleError
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers.vz_errors import VZDriverError, config_error, from_nserror
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.identity_files import read_data_representation, write_data_representation

# The oldest host the driver supports. 14.0 because the warm path is part of the product (DESIGN §12):
# save/restore, validateSaveRestoreSupport and VZMacKeyboardConfiguration (the save-compatible
# keyboard) are 14.0; everything else used here is ≤ 13.0 (VZMacAuxiliaryStorage.initWithURL_,
# VZMacTrackpadConfiguration). The seed targets 26+, which doctor reports; 14–25 work with a warning.
MIN_MACOS = (14, 0)

MIB = 1 << 20
CACHING_MODES = ("automatic", "cached", "uncached")
SYNC_MODES = ("full", "fsync", "none")
DISPLAY = (1920, 1200, 80)  # Apple's sample; headless, but tart and Apple both configure one (§2.3)


@dataclass(frozen=True)
class LaunchSpec:
    """What the agent wrote into RuntimeMetadata.json for this VM."""

    mac: str
    cpu_count: int
    memory_bytes: int
    caching_mode: str = "automatic"  # tart's default for macOS guests (§2.4)
    sync_mode: str = "full"
    saveable: bool = False  # the VM is to be saved (a warm-slot build): checked before it boots

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> LaunchSpec:
        try:
            spec = cls(mac=str(meta["mac_address"]), cpu_count=int(meta["cpu_count"]),
                       memory_bytes=int(meta["memory_bytes"]),
                       caching_mode=str(meta.get("disk_caching_mode") or "automatic"),
                       sync_mode=str(meta.get("disk_sync_mode") or "full"),
                       saveable=meta.get("saveable") is True)
        except KeyError as e:
            raise config_error(f"RuntimeMetadata.json lacks {e.args[0]!r}; the agent writes it") from None
        except (TypeError, ValueError) as e:
            raise config_error(f"RuntimeMetadata.json has a malformed launch spec: {e}") from None
        if spec.caching_mode not in CACHING_MODES:
            raise config_error(f"disk_caching_mode {spec.caching_mode!r}: use one of {CACHING_MODES}")
        if spec.sync_mode not in SYNC_MODES:
            raise config_error(f"disk_sync_mode {spec.sync_mode!r}: use one of {SYNC_MODES}")
        if spec.cpu_count < 1 or spec.memory_bytes < MIB:
            raise config_error(f"cpu_count {spec.cpu_count} / memory_bytes {spec.memory_bytes} make no VM")
        return spec


def file_url(foundation: Any, path: Path) -> Any:
    # The framework mishandles symlinked paths (tart, reference §1.8): always hand it the real path.
    return foundation.NSURL.fileURLWithPath_(os.path.realpath(path))


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise config_error(f"{path} is missing ({what}); the bundle is incomplete — re-create the runner")


def _blob(path: Path) -> bytes | None:
    try:
        return read_data_representation(path)
    except BundleError as e:
        raise config_error(str(e)) from None


def hardware_model(vz: Any, bundle: Bundle) -> Any:
    data = _blob(bundle.hardware_model)
    model = vz.VZMacHardwareModel.alloc().initWithDataRepresentation_(data) if data else None
    if model is None:
        raise config_error(f"{bundle.hardware_model} does not hold a VZMacHardwareModel data representation")
    if not model.isSupported():
        raise config_error(f"unsupported hardware model in {bundle.hardware_model}: this host cannot run "
                           "the template's macOS (host macOS too old for it); update the host or use an "
                           "older template")
    return model


def machine_identifier(vz: Any, bundle: Bundle, *, fresh: bool = False) -> Any:
    """The bundle's identifier; minted (and written back) for a placeholder file or when `fresh`."""
    _require(bundle.machine_identifier, "MachineIdentifier.json")
    data = None if fresh else _blob(bundle.machine_identifier)
    if data is None:
        ident = vz.VZMacMachineIdentifier.new()  # a new random identity (init is available here, §2.2)
        write_data_representation(bundle.machine_identifier, bytes(ident.dataRepresentation()))
        return ident
    ident = vz.VZMacMachineIdentifier.alloc().initWithDataRepresentation_(data)
    if ident is None:
        raise config_error(f"{bundle.machine_identifier} does not hold a VZMacMachineIdentifier")
    return ident


def platform_configuration(vz: Any, foundation: Any, bundle: Bundle, *, fresh_identity: bool) -> Any:
    _require(bundle.aux_storage, "AuxiliaryStorage")
    plat = vz.VZMacPlatformConfiguration.new()
    plat.setHardwareModel_(hardware_model(vz, bundle))
    plat.setMachineIdentifier_(machine_identifier(vz, bundle, fresh=fresh_identity))
    # Open the installed NVRAM; never initCreatingStorage… here, that would wipe it (rule 9).
    plat.setAuxiliaryStorage_(vz.VZMacAuxiliaryStorage.alloc().initWithURL_(file_url(foundation,
                                                                                  bundle.aux_storage)))
    return plat


def block_device(vz: Any, foundation: Any, path: Path, *, caching_mode: str = "automatic",
                 sync_mode: str = "full") -> Any:
    """A virtio block device on the RAW image at `path` (writable)."""
    caching = {"automatic": vz.VZDiskImageCachingModeAutomatic, "cached": vz.VZDiskImageCachingModeCached,
               "uncached": vz.VZDiskImageCachingModeUncached}[caching_mode]
    sync = {"full": vz.VZDiskImageSynchronizationModeFull, "fsync": vz.VZDiskImageSynchronizationModeFsync,
            "none": vz.VZDiskImageSynchronizationModeNone}[sync_mode]
    attachment, err = vz.VZDiskImageStorageDeviceAttachment.alloc() \
        .initWithURL_readOnly_cachingMode_synchronizationMode_error_(
            file_url(foundation, path), False, caching, sync, None)
    if attachment is None:
        raise from_nserror(err, f"open {path}", default_exit=VMExit.CONFIG_ERROR)
    return vz.VZVirtioBlockDeviceConfiguration.alloc().initWithAttachment_(attachment)


def boot_disk(vz: Any, foundation: Any, bundle: Bundle, spec: LaunchSpec) -> Any:
    _require(bundle.disk, "Disk.img")
    return block_device(vz, foundation, bundle.disk, caching_mode=spec.caching_mode, sync_mode=spec.sync_mode)


def nat_network(vz: Any, mac: str | None) -> Any:
    """NAT networking with the MAC `mac`, or a random locally administered one for None."""
    address = (vz.VZMACAddress.randomLocallyAdministeredAddress() if mac is None
               else vz.VZMACAddress.alloc().initWithString_(mac))
    if address is None:
        raise config_error(f"mac_address {mac!r} is not a MAC address VZ accepts (aa:bb:cc:dd:ee:ff)")
    net = vz.VZVirtioNetworkDeviceConfiguration.new()
    net.setAttachment_(vz.VZNATNetworkDeviceAttachment.new())
    net.setMACAddress_(address)  # fixed per runner: the agent finds the guest's IP by this MAC (§7)
    return net


def graphics(vz: Any) -> Any:
    width, height, ppi = DISPLAY
    gfx = vz.VZMacGraphicsDeviceConfiguration.new()
    gfx.setDisplays_([vz.VZMacGraphicsDisplayConfiguration.alloc()
                      .initWithWidthInPixels_heightInPixels_pixelsPerInch_(width, height, ppi)])
    return gfx


def input_devices(vz: Any, host: tuple[int, int]) -> tuple[list[Any], list[Any]]:
    """(keyboards, pointing devices) for this host.

    From 14.0 the Mac keyboard + Mac trackpad pair, the only input devices Apple's sample and tart's
    suspendable mode save and restore (§2.6, §3.7). Older hosts would need the USB pair, but they are
    below MIN_MACOS and refused before we get here, so there is one row.
    """
    if host < MIN_MACOS:
        raise config_error(f"host macOS {host[0]}.{host[1]} is older than {MIN_MACOS[0]}.{MIN_MACOS[1]}")
    return [vz.VZMacKeyboardConfiguration.new()], [vz.VZMacTrackpadConfiguration.new()]


def clamp_cpu(vz: Any, wanted: int) -> int:
    cls = vz.VZVirtualMachineConfiguration
    return max(int(cls.minimumAllowedCPUCount()), min(wanted, int(cls.maximumAllowedCPUCount())))


def clamp_memory(vz: Any, wanted: int) -> int:
    cls = vz.VZVirtualMachineConfiguration
    low, high = int(cls.minimumAllowedMemorySize()), int(cls.maximumAllowedMemorySize())
    value = max(low, min(wanted, high))
    value -= value % MIB  # must be a multiple of 1 MiB (§2.1)
    return value if value >= low else value + MIB


def build_configuration(vz: Any, foundation: Any, bundle: Bundle, spec: LaunchSpec, *,
                        host: tuple[int, int], fresh_identity: bool = False) -> Any:
    """A validated VZVirtualMachineConfiguration for a runner bundle, or VZDriverError saying what is wrong."""
    return assemble(vz, host=host,
                    platform=platform_configuration(vz, foundation, bundle, fresh_identity=fresh_identity),
                    cpu_count=clamp_cpu(vz, spec.cpu_count), memory_bytes=clamp_memory(vz, spec.memory_bytes),
                    disk=boot_disk(vz, foundation, bundle, spec), network=nat_network(vz, spec.mac))


def assemble(vz: Any, *, host: tuple[int, int], platform: Any, cpu_count: int, memory_bytes: int,
             disk: Any, network: Any) -> Any:
    """The macOS guest recipe (§2.0) around a platform, boot disk and network; validated.

    Shared by runner boots and the installer (`shoes_vz.macos.install`), so a template is installed
    on exactly the device set its runners boot with. It is the *suspendable* set, for every VM: a
    warm slot is saved from a cold boot of the template and restored into runner configurations,
    and a restore needs the same devices as the save (§3.7), so there is one set, and it is the one
    save/restore supports — tart's `--suspendable` set and Apple's macOS sample: the Mac keyboard and
    trackpad, Mac graphics, the virtio boot disk, NAT virtio-net with a fixed MAC, vsock; no entropy
    device (tart drops it for suspendable VMs, Apple's macOS sample has none; macOS guests have their
    own RNG) and no audio. `validateSaveRestoreSupportWithError_` confirms it on the host (`vz.py`).
    """
    keyboards, pointers = input_devices(vz, host)
    cfg = vz.VZVirtualMachineConfiguration.new()
    cfg.setPlatform_(platform)
    cfg.setBootLoader_(vz.VZMacOSBootLoader.new())
    cfg.setCPUCount_(cpu_count)
    cfg.setMemorySize_(memory_bytes)
    cfg.setStorageDevices_([disk])  # the boot disk must be first
    cfg.setNetworkDevices_([network])  # exactly one: a different count restores but runs no guest code
    cfg.setGraphicsDevices_([graphics(vz)])
    cfg.setKeyboards_(keyboards)
    cfg.setPointingDevices_(pointers)
    cfg.setSocketDevices_([vz.VZVirtioSocketDeviceConfiguration.new()])  # also the restore's liveness probe
    ok, err = cfg.validateWithError_(None)
    if not ok:
        raise from_nserror(err, "validate the VM configuration", default_exit=VMExit.CONFIG_ERROR)
    return cfg


def check_save_restore(cfg: Any) -> VZDriverError | None:
    """None when this configuration can be saved/restored (14.0+), else why not."""
    ok, err = cfg.validateSaveRestoreSupportWithError_(None)
    return None if ok else from_nserror(err, "save or restore this configuration",
                                        default_exit=VMExit.START_FAILED)


__all__ = ["MIN_MACOS", "LaunchSpec", "VZDriverError", "assemble", "block_device", "build_configuration",
           "check_save_restore", "clamp_cpu", "clamp_memory", "file_url", "nat_network"]
