"""NSError → message + VMExit, one row per case the issue names (no fake modules needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from shoes_vz.vm.drivers.vz_errors import from_nserror
from shoes_vz.vm.exit_status import VMExit


@dataclass
class Err:
    d: str
    c: int
    text: str
    info: dict[str, Any] = field(default_factory=dict)

    def domain(self) -> str:
        return self.d

    def code(self) -> int:
        return self.c

    def localizedDescription(self) -> str:
        return self.text

    def userInfo(self) -> dict[str, Any]:
        return self.info


ENTITLEMENT = ("Invalid virtual machine configuration. The process doesn’t have the "
               "“com.apple.security.virtualization” entitlement.")


@pytest.mark.parametrize(
    ("err", "default", "exit", "words"),
    [
        (Err("VZErrorDomain", 2, ENTITLEMENT), VMExit.START_FAILED, VMExit.CONFIG_ERROR,
         ["VZErrorDomain code 2", "shoes-vz sign-python"]),
        (Err("VZErrorDomain", 2, "Invalid virtual machine configuration. The hardware model is not "
             "supported on the current host."), VMExit.CONFIG_ERROR, VMExit.CONFIG_ERROR,
         ["hardware model is not supported", "VZErrorInvalidVirtualMachineConfiguration"]),
        (Err("VZErrorDomain", 6, "The number of virtual machines exceeds the limit."), VMExit.START_FAILED,
         VMExit.CAPACITY, ["VZErrorVirtualMachineLimitExceeded", "Apple allows 2", "reboot"]),
        (Err("VZErrorDomain", 8, "Out of disk space."), VMExit.START_FAILED, VMExit.START_FAILED,
         ["VZErrorOutOfDiskSpace", "free space"]),
        (Err("VZErrorDomain", 5, "The disk image is invalid."), VMExit.START_FAILED, VMExit.CONFIG_ERROR,
         ["VZErrorInvalidDiskImage", "Disk.img"]),
        (Err("VZErrorDomain", 12, "The virtual machine failed to restore.",
             {"NSLocalizedFailureReason": "invalid argument"}), VMExit.START_FAILED, VMExit.START_FAILED,
         ["VZErrorRestore", "invalid argument"]),
        (Err("NSCocoaErrorDomain", 260, "No such file."), VMExit.CONFIG_ERROR, VMExit.CONFIG_ERROR,
         ["NSCocoaErrorDomain code 260"]),
    ],
)
def test_mapping(err: Err, default: VMExit, exit: VMExit, words: list[str]) -> None:
    e = from_nserror(err, "start the VM", default_exit=default)
    assert e.exit is exit
    assert e.capacity is (exit is VMExit.CAPACITY)
    assert str(e).startswith("could not start the VM: ")
    for w in words:
        assert w in str(e)


def test_a_broken_nserror_still_gives_a_message() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("boom")

    e = from_nserror(Broken(), "stop the VM", default_exit=VMExit.GUEST_ERROR)
    assert e.exit is VMExit.GUEST_ERROR and "could not stop the VM" in str(e)
