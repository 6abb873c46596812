"""macOS host tooling: `doctor` (can this Mac run vz VMs?) and `sign-python` (the entitlement).

PyObjC is imported lazily inside the doctor's probes only; both modules load on Linux.
"""

from __future__ import annotations

from shoes_vz.macos.doctor import Check, Level, Probes, has_fatal, run_checks
from shoes_vz.macos.sign import SignResult, sign_python

__all__ = ["Check", "Level", "Probes", "SignResult", "has_fatal", "run_checks", "sign_python"]
