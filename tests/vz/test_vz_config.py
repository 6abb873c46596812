"""Building the macOS guest configuration from a bundle (against the generated fake)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakevz import FakeVZ
from vzharness import MAC, make_bundle

from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers.vz_config import LaunchSpec, build_configuration
from shoes_vz.vm.drivers.vz_errors import VZDriverError
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.identity_files import is_placeholder, read_data_representation


def build(fake: FakeVZ, bundle: Bundle, **kw: object) -> object:
    import Foundation
    import Virtualization as vz

    spec = LaunchSpec.from_metadata(bundle.read_metadata())
    return build_configuration(vz, Foundation, bundle, spec, host=fake.knobs.host, **kw)  # type: ignore[arg-type]


def test_configuration_from_bundle(fake_vz: FakeVZ, bundle: Bundle) -> None:
    import Virtualization as vz

    assert is_placeholder(bundle.machine_identifier)
    cfg = build(fake_vz, bundle)
    plat = cfg.platform()
    assert isinstance(plat, vz.VZMacPlatformConfiguration)
    assert isinstance(cfg.bootLoader(), vz.VZMacOSBootLoader)
    # the placeholder was bound to a freshly minted identifier, and the file now holds it
    minted = read_data_representation(bundle.machine_identifier)
    assert minted == plat.machineIdentifier().dataRepresentation()
    assert plat.auxiliaryStorage().URL().path() == str(bundle.aux_storage.resolve())
    disk = cfg.storageDevices()[0]
    assert isinstance(disk, vz.VZVirtioBlockDeviceConfiguration)
    att = disk.attachment()
    assert att.URL().path() == str(bundle.disk.resolve())
    assert att.cachingMode() == vz.VZDiskImageCachingModeAutomatic
    assert att.synchronizationMode() == vz.VZDiskImageSynchronizationModeFull
    net = cfg.networkDevices()[0]
    assert net.MACAddress().string() == MAC
    assert isinstance(net.attachment(), vz.VZNATNetworkDeviceAttachment)
    assert isinstance(cfg.graphicsDevices()[0], vz.VZMacGraphicsDeviceConfiguration)
    assert isinstance(cfg.keyboards()[0], vz.VZMacKeyboardConfiguration)
    assert isinstance(cfg.pointingDevices()[0], vz.VZMacTrackpadConfiguration)
    # the suspendable set (tart's, Apple's macOS sample): no entropy device, one vsock, one NIC
    assert cfg.entropyDevices() is None and len(cfg.socketDevices()) == 1 and len(cfg.networkDevices()) == 1
    assert (cfg.CPUCount(), cfg.memorySize()) == (4, 8 << 30)
    # a second boot reuses the bound identifier
    again = build(fake_vz, bundle)
    assert again.platform().machineIdentifier().dataRepresentation() == minted


def test_fresh_identity_replaces_the_identifier(fake_vz: FakeVZ, bundle: Bundle) -> None:
    first = build(fake_vz, bundle).platform().machineIdentifier().dataRepresentation()
    second = build(fake_vz, bundle, fresh_identity=True).platform().machineIdentifier().dataRepresentation()
    assert first != second == read_data_representation(bundle.machine_identifier)


def test_cpu_and_memory_are_clamped(fake_vz: FakeVZ, tmp_path: Path) -> None:
    fake_vz.knobs.max_cpu, fake_vz.knobs.max_memory = 6, 12 << 30
    cfg = build(fake_vz, make_bundle(tmp_path, cpu=64, memory=(64 << 30) + 12345))
    assert (cfg.CPUCount(), cfg.memorySize()) == (6, 12 << 30)
    cfg = build(fake_vz, make_bundle(tmp_path, name="r2", cpu=1, memory=(1 << 30) + 7))
    assert (cfg.CPUCount(), cfg.memorySize()) == (1, 2 << 30)


def test_disk_modes_are_configurable(fake_vz: FakeVZ, tmp_path: Path) -> None:
    import Virtualization as vz

    b = make_bundle(tmp_path, disk_caching_mode="cached", disk_sync_mode="none")
    att = build(fake_vz, b).storageDevices()[0].attachment()
    assert att.cachingMode() == vz.VZDiskImageCachingModeCached
    assert att.synchronizationMode() == vz.VZDiskImageSynchronizationModeNone
    with pytest.raises(VZDriverError, match="disk_sync_mode"):
        build(fake_vz, make_bundle(tmp_path, name="r2", disk_sync_mode="sometimes"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b.disk.unlink(), "Disk.img is missing"),
        (lambda b: b.aux_storage.unlink(), "AuxiliaryStorage is missing"),
        (lambda b: b.hardware_model.write_text(json.dumps({"dataRepresentation": ""})), "non-empty base64"),
        (lambda b: b.hardware_model.write_text(json.dumps({"dataRepresentation": "AAAA"})),
         "does not hold a VZMacHardwareModel"),
        (lambda b: b.machine_identifier.write_text(json.dumps({"dataRepresentation": "AAAA"})),
         "does not hold a VZMacMachineIdentifier"),
        (lambda b: b.runtime_metadata.write_text(json.dumps({"cpu_count": 2})), "lacks 'mac_address'"),
        (lambda b: b.runtime_metadata.write_text(json.dumps(
            {"mac_address": "zz:00", "cpu_count": 2, "memory_bytes": 4 << 30})), "is not a MAC address"),
    ],
)
def test_bundle_problems_are_config_errors(fake_vz: FakeVZ, bundle: Bundle, damage: object,
                                           message: str) -> None:
    damage(bundle)  # type: ignore[operator]
    with pytest.raises(VZDriverError, match=message) as info:
        build(fake_vz, bundle)
    assert info.value.exit is VMExit.CONFIG_ERROR


def test_unsupported_hardware_model(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.hardware_supported = False
    with pytest.raises(VZDriverError, match="unsupported hardware model") as info:
        build(fake_vz, bundle)
    assert info.value.exit is VMExit.CONFIG_ERROR


def test_missing_entitlement(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.entitlement = False
    with pytest.raises(VZDriverError) as info:
        build(fake_vz, bundle)
    text = str(info.value)
    assert "VZErrorDomain code 2" in text and "sign-python" in text
    assert info.value.exit is VMExit.CONFIG_ERROR and not info.value.capacity


def test_invalid_disk_image(fake_vz: FakeVZ, bundle: Bundle) -> None:
    fake_vz.knobs.disk_error = ("VZErrorDomain", 5, "The disk image is invalid.")
    with pytest.raises(VZDriverError, match="VZErrorInvalidDiskImage") as info:
        build(fake_vz, bundle)
    assert info.value.exit is VMExit.CONFIG_ERROR
