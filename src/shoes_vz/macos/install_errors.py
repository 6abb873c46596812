"""`InstallError`: why `template create` failed, what to do, and whether re-running it can succeed.

    ShoesVzError
    └── InstallError        .resumable: the same command, re-run (after the fix named), can succeed

Codes are the SDK's `VZErrorCode` values (names in `vz_errors.VZ_ERROR_CODES`, checked against the
fwinfo by the contract test). An NSError is read through `vz_errors.describe` only; no PyObjC here.
"""

from __future__ import annotations

from typing import Any

from shoes_vz.core.errors import ShoesVzError
from shoes_vz.vm.drivers.vz_errors import (
    ENTITLEMENT_HINT,
    HOST_SETUP_FIX,
    VZ_ERROR_CODES,
    VZ_ERROR_DOMAIN,
    VZDriverError,
    describe,
    host_setup_cause,
    is_entitlement_error,
)

RERUN = "re-run the same command"
NSURL_ERROR_DOMAIN = "NSURLErrorDomain"
NS_COCOA_ERROR_DOMAIN = "NSCocoaErrorDomain"
NS_FILE_WRITE_OUT_OF_SPACE = 640  # NSFileWriteOutOfSpaceError

_CODE = {name: code for code, name in VZ_ERROR_CODES.items()}  # a misspelt name fails at import

# VZErrorCode → (resumable, what the operator should do)
_ACTIONS: dict[int, tuple[bool, str]] = {
    _CODE["VZErrorVirtualMachineLimitExceeded"]: (
        True, f"the host already runs its maximum of 2 macOS guests; stop one, then {RERUN}"),
    _CODE["VZErrorNetworkError"]: (True, f"a network error; check the connection, then {RERUN}"),
    _CODE["VZErrorOutOfDiskSpace"]: (
        True, f"the volume is out of space; free space where --templates-dir lives, then {RERUN}"),
    _CODE["VZErrorOperationCancelled"]: (True, f"the installation was cancelled; {RERUN} to start it again"),
    _CODE["VZErrorRestoreImageCatalogLoadFailed"]: (
        True, f"could not reach Apple's restore-image catalog; check the network, then {RERUN}"),
    _CODE["VZErrorInvalidRestoreImageCatalog"]: (
        True, f"Apple's restore-image catalog was unreadable; {RERUN} later, or pass --ipsw PATH"),
    _CODE["VZErrorNoSupportedRestoreImagesInCatalog"]: (
        False, "Apple's catalog has no restore image this host supports; update macOS on the host, or pass "
               "--ipsw PATH with an IPSW this host supports"),
    _CODE["VZErrorRestoreImageLoadFailed"]: (True, f"the IPSW could not be loaded; download it again, then {RERUN}"),
    _CODE["VZErrorInvalidRestoreImage"]: (
        True, f"the IPSW is damaged or not a macOS restore image; download it again, then {RERUN}"),
    _CODE["VZErrorInstallationRequiresUpdate"]: (
        True, f"this IPSW needs a newer host: update macOS on the host (Software Update), then {RERUN}"),
    _CODE["VZErrorInstallationFailed"]: (
        True, f"the installer failed; {RERUN} (it starts over); if it fails again, download the IPSW again"),
}
RESTORE_IMAGE_UNUSABLE = (_CODE["VZErrorRestoreImageLoadFailed"], _CODE["VZErrorInvalidRestoreImage"])


class InstallError(ShoesVzError):
    def __init__(self, message: str, *, resumable: bool, domain: str | None = None,
                 code: int | None = None) -> None:
        super().__init__(message)
        self.resumable = resumable
        self.domain = domain
        self.code = code


def from_nserror(err: Any, doing: str) -> InstallError:
    """One operator message for an NSError met while `doing` (e.g. "load the restore image")."""
    domain, code, text = describe(err)
    name = VZ_ERROR_CODES.get(code, "") if domain == VZ_ERROR_DOMAIN and code is not None else ""
    where = f"{domain} code {code}" + (f" {name}" if name else "")
    resumable, hint = False, ""
    cause = host_setup_cause(domain, code, text)
    if is_entitlement_error(domain, code, text):
        hint = ENTITLEMENT_HINT
    elif cause is not None:
        resumable, hint = True, f"{cause}; {HOST_SETUP_FIX}, then {RERUN}"
    elif domain == VZ_ERROR_DOMAIN and code in _ACTIONS:
        resumable, hint = _ACTIONS[code]
    elif domain == NSURL_ERROR_DOMAIN:
        resumable, hint = True, f"a network error; check the connection, then {RERUN}"
    elif domain == NS_COCOA_ERROR_DOMAIN and code == NS_FILE_WRITE_OUT_OF_SPACE:
        resumable, hint = _ACTIONS[_CODE["VZErrorOutOfDiskSpace"]]
    message = f"could not {doing}: {text} [{where}]" + (f"; {hint}" if hint else "")
    return InstallError(message, resumable=resumable, domain=domain, code=code)


def from_driver_error(e: VZDriverError) -> InstallError:
    """A configuration/queue failure from the shared vz pieces (mostly needs more than a re-run)."""
    known = e.domain == VZ_ERROR_DOMAIN and e.code in _ACTIONS
    return InstallError(str(e), resumable=known and _ACTIONS[e.code or 0][0], domain=e.domain, code=e.code)


__all__ = ["RESTORE_IMAGE_UNUSABLE", "InstallError", "from_driver_error", "from_nserror"]
