"""The generated fake behaves like PyObjC where the driver depends on it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fakevz import FakeVZ, QueueViolation, check_behaviour_against_sdk, fake_ipsw_bytes


def test_unknown_names_raise_attribute_error(fake_vz: FakeVZ) -> None:
    import Virtualization as vz

    with pytest.raises(AttributeError):
        vz.VZNoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        vz.VZVirtualMachineConfiguration.new().validate()  # the Swift name (pyobjc #433)
    with pytest.raises(AttributeError):
        vz.VZVirtualMachineConfiguration.new().cpuCount()
    assert vz.VZVirtualMachineStateRunning == 1
    assert vz.VZErrorVirtualMachineLimitExceeded == 6
    assert vz.VZErrorDomain == "VZErrorDomain"


def test_unavailable_init_and_new(fake_vz: FakeVZ) -> None:
    import Virtualization as vz

    with pytest.raises(TypeError, match="NS_UNAVAILABLE"):
        vz.VZMACAddress.new()
    with pytest.raises(TypeError, match="NS_UNAVAILABLE"):
        vz.VZMacHardwareModel.alloc().init()
    # subclasses of an unavailable base: init refused (PyObjC propagates), new allowed (+[NSObject new])
    with pytest.raises(TypeError):
        vz.VZMacOSBootLoader.alloc().init()
    assert vz.VZMacOSBootLoader.new() is not None
    assert vz.VZVirtualMachineConfiguration.alloc().init() is not None


def test_out_params_are_tuples_and_types_are_checked(fake_vz: FakeVZ) -> None:
    import Foundation
    import Virtualization as vz

    ok, err = vz.VZVirtualMachineConfiguration.new().validateWithError_(None)
    assert ok is False and err.code() == 2
    with pytest.raises(TypeError, match="out-parameter"):
        vz.VZVirtualMachineConfiguration.new().validateWithError_(object())
    with pytest.raises(TypeError, match="NSURL"):
        vz.VZMacAuxiliaryStorage.alloc().initWithURL_("/tmp/aux")
    assert vz.VZMacAuxiliaryStorage.alloc().initWithURL_(Foundation.NSURL.fileURLWithPath_("/x")) is not None
    cfg = vz.VZVirtualMachineConfiguration.new()
    with pytest.raises(TypeError, match="integer"):
        cfg.setCPUCount_("4")
    with pytest.raises(TypeError, match="VZBootLoader"):
        cfg.setBootLoader_(vz.VZMacPlatformConfiguration.new())
    with pytest.raises(TypeError, match="takes 1 arguments"):
        cfg.setCPUCount_()


def test_behaviours_are_sdk_selectors(fake_vz: FakeVZ) -> None:
    assert check_behaviour_against_sdk(fake_vz.sdk) == []


def test_delegate_is_weak_and_protocols_exist(fake_vz: FakeVZ) -> None:
    import Foundation
    import objc

    with pytest.raises(objc.ProtocolError):
        objc.protocolNamed("VZNoSuchDelegate")
    with pytest.raises(TypeError, match="arguments for selector"):
        class Bad(Foundation.NSObject, protocols=[objc.protocolNamed("VZVirtualMachineDelegate")]):
            def guestDidStopVirtualMachine_(self) -> None: ...


def test_install_surface_is_the_sdk(fake_vz: FakeVZ, tmp_path: Path) -> None:
    import Foundation
    import Virtualization as vz

    for cls in (vz.VZMacOSInstaller, vz.VZMacOSRestoreImage, vz.VZMacOSConfigurationRequirements,
                vz.VZMacAuxiliaryStorage):
        with pytest.raises(TypeError, match="NS_UNAVAILABLE"):
            cls.new()
    ipsw = tmp_path / "x.ipsw"
    ipsw.write_bytes(fake_ipsw_bytes(min_cpu=3))
    loaded = threading.Event()
    box: list[Any] = []
    vz.VZMacOSRestoreImage.loadFileURL_completionHandler_(Foundation.NSURL.fileURLWithPath_(str(ipsw)),
                                                          lambda image, err: (box.append(image), loaded.set()))
    assert loaded.wait(5)
    image = box[0]
    assert image.buildVersion() == "25F71" and image.operatingSystemVersion().majorVersion == 26
    req = image.mostFeaturefulSupportedConfiguration()
    assert req.minimumSupportedCPUCount() == 3 and req.hardwareModel().isSupported()
    with pytest.raises(AttributeError):
        image.minimumCPUCount()  # not an SDK selector
    with pytest.raises(ValueError, match="file URL"):
        vz.VZMacOSRestoreImage.loadFileURL_completionHandler_(Foundation.NSURL.URLWithString_("https://x/y.ipsw"),
                                                              lambda image, err: None)
    aux_url = Foundation.NSURL.fileURLWithPath_(str(tmp_path / "aux"))
    aux, err = vz.VZMacAuxiliaryStorage.alloc().initCreatingStorageAtURL_hardwareModel_options_error_(
        aux_url, req.hardwareModel(), 0, None)
    assert aux is not None and err is None
    again, err = vz.VZMacAuxiliaryStorage.alloc().initCreatingStorageAtURL_hardwareModel_options_error_(
        aux_url, req.hardwareModel(), 0, None)
    assert again is None and err.code() == 516  # no overwrite without the option
    assert vz.VZMacAuxiliaryStorage.alloc().initCreatingStorageAtURL_hardwareModel_options_error_(
        aux_url, req.hardwareModel(), vz.VZMacAuxiliaryStorageInitializationOptionAllowOverwrite, None)[0]


def test_the_installer_lives_on_the_vm_queue(fake_vz: FakeVZ) -> None:
    import dispatch
    import Foundation
    import Virtualization as vz

    q = dispatch.dispatch_queue_create(b"q", None)
    cfg = vz.VZVirtualMachineConfiguration.new()
    cfg.setPlatform_(vz.VZMacPlatformConfiguration.new())
    vm = vz.VZVirtualMachine.alloc().initWithConfiguration_queue_(cfg, q)
    url = Foundation.NSURL.fileURLWithPath_("/x.ipsw")
    with pytest.raises(QueueViolation):
        vz.VZMacOSInstaller.alloc().initWithVirtualMachine_restoreImageURL_(vm, url)
    fake_vz.violations.clear()  # expected here; the fixture fails on any other
