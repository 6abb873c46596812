"""macOS host tooling: `doctor` (can this Mac run vz VMs?), `sign-python` (the entitlement, on the
`interpreter` image) and `install` (macOS from an IPSW into a template draft, with the `ipsw_cache`
it downloads into).

PyObjC is imported lazily (the doctor's probes, the installer's first step); every module loads on
Linux.
"""

from __future__ import annotations

from shoes_vz.macos.doctor import Check, Level, Probes, has_fatal, run_checks
from shoes_vz.macos.install import InstalledImage, InstallProgress, install_macos, require_virtualization
from shoes_vz.macos.install_errors import InstallError
from shoes_vz.macos.sign import SignResult, sign_python

__all__ = ["Check", "InstallError", "InstallProgress", "InstalledImage", "Level", "Probes", "SignResult",
           "has_fatal", "install_macos", "require_virtualization", "run_checks", "sign_python"]
