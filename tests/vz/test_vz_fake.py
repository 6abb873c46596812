"""The generated fake behaves like PyObjC where the driver depends on it."""

from __future__ import annotations

import pytest
from fakevz import FakeVZ, check_behaviour_against_sdk


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
