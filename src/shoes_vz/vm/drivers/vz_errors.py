"""NSError → DriverError for the vz driver, with the VMExit each failure maps to.

Codes are `VZErrorCode` from the macOS 26.5 SDK (reference §4; the contract test checks every name
and value here against `arm64-26.5.fwinfo`). This module never imports PyObjC: it reads an NSError
only through `domain()`, `code()`, `localizedDescription()` and `userInfo()`.
"""

from __future__ import annotations

from typing import Any

from shoes_vz.core.errors import DriverError
from shoes_vz.vm.exit_status import VMExit

VZ_ERROR_DOMAIN = "VZErrorDomain"

VZ_ERROR_CODES: dict[int, str] = {
    1: "VZErrorInternal",
    2: "VZErrorInvalidVirtualMachineConfiguration",
    3: "VZErrorInvalidVirtualMachineState",
    4: "VZErrorInvalidVirtualMachineStateTransition",
    5: "VZErrorInvalidDiskImage",
    6: "VZErrorVirtualMachineLimitExceeded",
    7: "VZErrorNetworkError",
    8: "VZErrorOutOfDiskSpace",
    9: "VZErrorOperationCancelled",
    10: "VZErrorNotSupported",
    11: "VZErrorSave",
    12: "VZErrorRestore",
    # restore images and the installer (13.0; reference §4.4)
    10001: "VZErrorRestoreImageCatalogLoadFailed",
    10002: "VZErrorInvalidRestoreImageCatalog",
    10003: "VZErrorNoSupportedRestoreImagesInCatalog",
    10004: "VZErrorRestoreImageLoadFailed",
    10005: "VZErrorInvalidRestoreImage",
    10006: "VZErrorInstallationRequiresUpdate",
    10007: "VZErrorInstallationFailed",
}
INTERNAL, INVALID_CONFIGURATION, INVALID_DISK_IMAGE, LIMIT_EXCEEDED, OUT_OF_DISK_SPACE = 1, 2, 5, 6, 8
ENTITLEMENT = "com.apple.security.virtualization"
# Not VZErrorCode values: what the Security framework and the framework's host-key lookup give when
# the VM's user has no GUI login / unlocked login keychain (tart#1067, #1025, #1137).
KEYCHAIN_INTERACTION_NOT_ALLOWED = -25308   # errSecInteractionNotAllowed
HOST_KEY_UNAVAILABLE = -9                   # "Failed to get current host key" (macOS 26 hosts)
STARTS = ("start", "restore", "resume", "install")  # where code 1 means the host process is set up wrong

# What an operator should do, by code (messages say what happened; these say what to do).
_HINTS: dict[int, str] = {
    LIMIT_EXCEEDED: "the host already runs its maximum of macOS guests (Apple allows 2); if none are "
                    "running, the host leaked its VM quota and needs a reboot",
    OUT_OF_DISK_SPACE: "free space on the volume that holds the runner bundles (APFS clones allocate "
                       "lazily)",
    INVALID_DISK_IMAGE: "the bundle's Disk.img is not a usable RAW/ASIF image; rebuild the template or "
                        "re-clone the runner",
}
ENTITLEMENT_HINT = (f"the Python interpreter image lacks the {ENTITLEMENT} entitlement; run "
                     "`shoes-vz sign-python` (then `shoes-vz doctor`)")
HOST_SETUP_FIX = ("run the agent, and every command that starts a VM, as a normal user logged in to the GUI (auto-"
                  "login) with an unlocked login keychain — never as root: a LaunchAgent in that user's session "
                  "(docs/macos-host.md); `shoes-vz doctor` checks it")


class VZDriverError(DriverError):
    """A DriverError that remembers the NSError (if any) and the exit status it maps to."""

    def __init__(self, message: str, *, exit: VMExit, domain: str | None = None,
                 code: int | None = None) -> None:
        super().__init__(message, capacity=exit is VMExit.CAPACITY)
        self.exit = exit
        self.domain = domain
        self.code = code


def _text(err: Any, selector: str) -> str:
    try:
        return str(getattr(err, selector)())
    except Exception:  # an odd NSError must not hide the real failure
        return "?"


def describe(err: Any) -> tuple[str, int | None, str]:
    """(domain, code, localized description + failure reason) of an NSError-like object."""
    domain = _text(err, "domain")
    try:
        code: int | None = int(err.code())
    except Exception:
        code = None
    text = _text(err, "localizedDescription")
    try:
        info = err.userInfo() or {}
        reason = info.get("NSLocalizedFailureReason") or info.get("NSLocalizedRecoverySuggestion")
        if reason and str(reason) not in text:
            text = f"{text} ({reason})"
    except Exception:
        pass
    return domain, code, text


def is_entitlement_error(domain: str, code: int | None, text: str) -> bool:
    return domain == VZ_ERROR_DOMAIN and code == INVALID_CONFIGURATION and ENTITLEMENT in text


def host_setup_cause(domain: str, code: int | None, text: str) -> str | None:
    """The cause, when an error is what a wrongly set-up host process gives (see HOST_SETUP_FIX)."""
    lowered = text.lower()
    if code == KEYCHAIN_INTERACTION_NOT_ALLOWED or str(KEYCHAIN_INTERACTION_NOT_ALLOWED) in text \
            or "interaction is not allowed with the security server" in lowered:
        return (f"the login keychain of the user running the VM is locked or missing (errSecInteractionNotAllowed "
                f"{KEYCHAIN_INTERACTION_NOT_ALLOWED}): from macOS 15 the framework keeps a key there")
    if code == HOST_KEY_UNAVAILABLE and "host key" in lowered:
        return ("the framework could not read its host key from the login keychain of the user running the VM "
                f"(code {HOST_KEY_UNAVAILABLE}): no GUI login or a locked keychain")
    if domain == VZ_ERROR_DOMAIN and code == INTERNAL:
        return ("this is what macOS 15+ guests give when the VM's process runs as root, or as a user without a "
                "GUI login and an unlocked login keychain (tart#921, tart#1075)")
    return None


def from_nserror(err: Any, doing: str, *, default_exit: VMExit) -> VZDriverError:
    """One clear message with domain/code: `doing` says what we tried (e.g. "start the VM")."""
    domain, code, text = describe(err)
    name = VZ_ERROR_CODES.get(code, "") if domain == VZ_ERROR_DOMAIN and code is not None else ""
    where = f"{domain} code {code}" + (f" {name}" if name else "")
    exit = default_exit
    cause = host_setup_cause(domain, code, text)
    if code == INTERNAL and not doing.startswith(STARTS):  # a running guest's internal error is its own
        cause = None
    if is_entitlement_error(domain, code, text):
        hint, exit = ENTITLEMENT_HINT, VMExit.CONFIG_ERROR
    elif cause is not None:
        hint = f"{cause}; {HOST_SETUP_FIX}"
        if code != INTERNAL:  # a locked keychain fails every start until the host is fixed
            exit = VMExit.CONFIG_ERROR
    elif domain == VZ_ERROR_DOMAIN and code in _HINTS:
        hint = _HINTS[code]
        if code == LIMIT_EXCEEDED:
            exit = VMExit.CAPACITY
        elif code == INVALID_DISK_IMAGE:
            exit = VMExit.CONFIG_ERROR
    else:
        hint = ""
    message = f"could not {doing}: {text} [{where}]" + (f"; {hint}" if hint else "")
    return VZDriverError(message, exit=exit, domain=domain, code=code)


def config_error(message: str) -> VZDriverError:
    """A bundle/configuration problem found before VZ was asked (missing file, bad JSON, ...)."""
    return VZDriverError(message, exit=VMExit.CONFIG_ERROR)


__all__ = ["ENTITLEMENT_HINT", "HOST_SETUP_FIX", "VZ_ERROR_CODES", "VZ_ERROR_DOMAIN", "VZDriverError", "config_error",
           "describe", "from_nserror", "host_setup_cause", "is_entitlement_error"]
