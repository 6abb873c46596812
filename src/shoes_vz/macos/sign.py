"""`shoes-vz sign-python`: ad-hoc sign the image this interpreter actually runs with the virtualization
entitlement, then prove it from a new process.

Which image: `interpreter.this_image()` — the kernel's answer for this process (a framework build's
`Python.app/…/Python`, virtualenv's copy in `venv/bin/python`, or the real `bin/python3.X`; see
`interpreter`). `vm run` is started with the same `sys.executable`, so it runs the same image.
Existing entitlements are kept and ours added; no hardened runtime (it would enable library
validation and reject PyObjC's extension modules). Idempotent: an image that already carries the
entitlement is left alone.

Then the check: a VM-free probe (`python -m shoes_vz.macos.interpreter`, started from
`sys.executable` as `vm run` is) must report the image that was signed and no entitlement error;
otherwise sign-python fails and says what runs instead. On success it records what it signed
(`interpreter.SignRecord`), so doctor can tell when an interpreter upgrade removed the signature.
"""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import ShoesVzError
from shoes_vz.macos.interpreter import ENTITLEMENT, SignRecord, this_image

CODESIGN = "/usr/bin/codesign"
PROBE_TIMEOUT = 60.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[bytes]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, check=False, timeout=PROBE_TIMEOUT)


def probe_command(executable: str | None = None) -> list[str]:
    """A new interpreter process started as `vm run` is, reporting its image and entitlement."""
    return [executable or sys.executable, "-m", "shoes_vz.macos.interpreter"]


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
            return f"{self.image} already carries {ENTITLEMENT}; nothing to do (a new interpreter process has it)"
        return f"signed {self.image} ad-hoc with {ENTITLEMENT} (a new interpreter process has it)"


def check_new_process(image: Path, run: Runner, commands: list[list[str]]) -> None:
    """A fresh interpreter, started as `vm run` is, runs `image` and has the entitlement."""
    argv = probe_command()
    commands.append(argv)
    try:
        proc = run(argv)
    except (OSError, subprocess.SubprocessError) as e:
        raise ShoesVzError(f"could not start the entitlement probe `{' '.join(argv)}`: {e}") from None
    try:
        answer = json.loads((proc.stdout or b"").decode(errors="replace").strip().splitlines()[-1])
        runs, problem = Path(str(answer["image"])), answer.get("problem")
    except (ValueError, KeyError, IndexError):
        err = (proc.stderr or b"").decode(errors="replace").strip()
        raise ShoesVzError(f"the entitlement probe `{' '.join(argv)}` failed (exit {proc.returncode}): {err}") from None
    if runs != image:
        raise ShoesVzError(f"signed {image}, but a new interpreter process runs {runs}: that is the image to sign "
                           "(is another interpreter first on PATH, or was the venv made with --copies?)")
    if problem:
        raise ShoesVzError(f"{image} carries the entitlement, yet a new interpreter process reports: {problem}")


def sign_python(image: Path | None = None, *, run: Runner = _run, platform: str = sys.platform,
                record: Path | None = None) -> SignResult:
    """Sign `image` (default: this interpreter's), check it from a new process, record it at `record`."""
    if platform != "darwin":
        raise ShoesVzError("sign-python is for macOS: codesign and the virtualization entitlement do not "
                           "exist here (the sim driver needs no signing)")
    image = image or this_image()
    if not image.is_file():
        raise ShoesVzError(f"the interpreter image {image} does not exist")
    commands = [display_command(image)]
    entitlements = current_entitlements(image, run)
    action = "already-signed"
    if entitlements.get(ENTITLEMENT) is not True:
        action = "signed"
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
        commands.append(display_command(image))
        if current_entitlements(image, run).get(ENTITLEMENT) is not True:
            raise ShoesVzError(f"codesign ran but {image} still lacks {ENTITLEMENT}")
    check_new_process(image, run, commands)
    if record is not None:
        try:
            SignRecord.of(image).write(record)
        except OSError as e:  # the signature is what counts; doctor just knows less
            print(f"note: could not record the signature in {record}: {e}", file=sys.stderr)
    return SignResult(image, action, commands)


__all__ = ["ENTITLEMENT", "SignResult", "check_new_process", "display_command", "probe_command", "sign_command",
           "sign_python"]
