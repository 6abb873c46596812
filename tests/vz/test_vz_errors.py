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
        # the host process's identity (tart#921, #1067, #1025, #1137): cause and fix named
        (Err("VZErrorDomain", 1, "The virtual machine failed to start.",
             {"NSLocalizedFailureReason": "Internal Virtualization error."}), VMExit.START_FAILED,
         VMExit.START_FAILED, ["VZErrorInternal", "runs as root", "unlocked login keychain", "never as root",
                               "docs/macos-host.md"]),
        (Err("VZErrorDomain", 2, "Failed to generate keypair: SecKeyCreateRandomKey_ios failed: -25308"),
         VMExit.START_FAILED, VMExit.CONFIG_ERROR, ["errSecInteractionNotAllowed -25308", "GUI (auto-login)"]),
        (Err("NSOSStatusErrorDomain", -25308, "Interaction is not allowed with the Security Server."),
         VMExit.START_FAILED, VMExit.CONFIG_ERROR, ["login keychain of the user running the VM is locked"]),
        (Err("VZErrorDomain", -9, "Failed to get current host key"), VMExit.START_FAILED, VMExit.CONFIG_ERROR,
         ["code -9", "host key from the login keychain", "LaunchAgent"]),
        (Err("VZErrorDomain", -9, "Something else"), VMExit.START_FAILED, VMExit.START_FAILED,
         ["VZErrorDomain code -9"]),
    ],
)
def test_mapping(err: Err, default: VMExit, exit: VMExit, words: list[str]) -> None:
    e = from_nserror(err, "start the VM", default_exit=default)
    assert e.exit is exit
    assert e.capacity is (exit is VMExit.CAPACITY)
    assert str(e).startswith("could not start the VM: ")
    for w in words:
        assert w in str(e)


def test_only_host_setup_errors_blame_the_host() -> None:
    e = from_nserror(Err("VZErrorDomain", -9, "Something else"), "start the VM", default_exit=VMExit.START_FAILED)
    assert "docs/macos-host.md" not in str(e)
    # code 1 from a guest that ran fine until now is the guest's, not the host set-up's
    e = from_nserror(Err("VZErrorDomain", 1, "Internal error."), "keep the VM running",
                     default_exit=VMExit.GUEST_ERROR)
    assert e.exit is VMExit.GUEST_ERROR and "docs/macos-host.md" not in str(e)


def test_a_broken_nserror_still_gives_a_message() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("boom")

    e = from_nserror(Broken(), "stop the VM", default_exit=VMExit.GUEST_ERROR)
    assert e.exit is VMExit.GUEST_ERROR and "could not stop the VM" in str(e)
