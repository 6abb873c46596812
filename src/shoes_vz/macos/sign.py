"""`shoes-vz sign-python`: ad-hoc sign the REAL interpreter image with the virtualization entitlement.

Entitlements are read from the executable image of the running process (reference §5.1):
* framework builds (python.org, Homebrew, Xcode's Python3.framework; PYTHONFRAMEWORK non-empty):
  `bin/python3` and a venv's `bin/python` are launchers that exec
  `<framework>/Versions/X.Y/Resources/Python.app/Contents/MacOS/Python` — that is the one to sign
  (signing the launcher does nothing: pyobjc issue #434);
* non-framework builds (python-build-standalone, `uv python install`): the real `bin/python3.X`.
Existing entitlements are kept and ours added; no hardened runtime (it would enable library
validation and reject PyObjC's extension modules). Idempotent: an image that already carries the
entitlement is left alone.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import ShoesVzError

ENTITLEMENT = "com.apple.security.virtualization"
CODESIGN = "/usr/bin/codesign"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[bytes]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, check=False)


def real_interpreter_image(executable: str | None = None, framework: str | None = None,
                           base_prefix: str | None = None) -> Path:
    """The image the kernel actually runs for this interpreter."""
    framework = sysconfig.get_config_var("PYTHONFRAMEWORK") if framework is None else framework
    if framework:
        prefix = Path(base_prefix or sys.base_prefix)
        return prefix / "Resources" / "Python.app" / "Contents" / "MacOS" / "Python"
    return Path(os.path.realpath(executable or sys.executable))


def display_command(image: Path) -> list[str]:
    return [CODESIGN, "-d", "--entitlements", "-", "--xml", str(image)]


def sign_command(image: Path, entitlements_plist: Path) -> list[str]:
    return [CODESIGN, "--sign", "-", "--force", "--entitlements", str(entitlements_plist), str(image)]


def current_entitlements(image: Path, run: Runner = _run) -> dict[str, Any]:
    """The image's entitlements ({} when unsigned or none)."""
    proc = run(display_command(image))
    out = proc.stdout or b""
    start = out.find(b"<?xml")
    if proc.returncode != 0 or start < 0:
        return {}
    try:
        data = plistlib.loads(out[start:])
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SignResult:
    image: Path
    action: str                       # "already-signed" | "signed"
    commands: list[list[str]] = field(default_factory=list)

    def describe(self) -> str:
        if self.action == "already-signed":
            return f"{self.image} already carries {ENTITLEMENT}; nothing to do"
        return f"signed {self.image} ad-hoc with {ENTITLEMENT}"


def sign_python(image: Path | None = None, *, run: Runner = _run, platform: str = sys.platform) -> SignResult:
    if platform != "darwin":
        raise ShoesVzError("sign-python is for macOS: codesign and the virtualization entitlement do not "
                           "exist here (the sim driver needs no signing)")
    image = image or real_interpreter_image()
    if not image.is_file():
        raise ShoesVzError(f"the interpreter image {image} does not exist")
    commands = [display_command(image)]
    entitlements = current_entitlements(image, run)
    if entitlements.get(ENTITLEMENT) is True:
        return SignResult(image, "already-signed", commands)
    entitlements[ENTITLEMENT] = True
    with tempfile.TemporaryDirectory(prefix="shoes-vz-sign-") as tmp:
        plist = Path(tmp) / "vz.entitlements"
        plist.write_bytes(plistlib.dumps(entitlements))
        argv = sign_command(image, plist)
        commands.append(argv)
        proc = run(argv)
    if proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        hint = " (try again with sudo: the image is not writable by you)" if not os.access(image, os.W_OK) else ""
        raise ShoesVzError(f"codesign failed for {image}: {err}{hint}")
    if current_entitlements(image, run).get(ENTITLEMENT) is not True:
        raise ShoesVzError(f"codesign ran but {image} still lacks {ENTITLEMENT}")
    commands.append(display_command(image))
    return SignResult(image, "signed", commands)


__all__ = ["ENTITLEMENT", "SignResult", "display_command", "real_interpreter_image", "sign_command",
           "sign_python"]
