"""The Python interpreter image: which file the kernel runs for this interpreter, and its signature record.

The virtualization entitlement is read from the executable image of the running process (reference
§5.1), which is not always `sys.executable`:
* a framework build's `bin/python3.X` — and a stdlib venv's `bin/python`, a symlink to it or (with
  `--copies`) a copy of it — is a launcher that execs
  `<framework>/Versions/X.Y/Resources/Python.app/Contents/MacOS/Python`: that is the image;
* virtualenv on a framework build copies that `Python.app` binary itself into `venv/bin/python`
  (and re-signs it ad hoc, without our entitlement): the venv's copy is the image;
* a non-framework build (python-build-standalone, `uv python install`, most Linux builds): the real
  `bin/python3.X` behind any symlinks.
`resolve_image` works that out from files; `running_image` asks the kernel about a live process
(`proc_pidpath` on macOS, `/proc/PID/exe` on Linux), which is the final word.

An interpreter upgrade (`brew upgrade python`, a python.org installer, `uv python upgrade`) replaces
the image, unsigned. `sign-python` records what it signed (`SignRecord`, in the VM user's state
directory) so `doctor` — also at agent start — can say that an upgrade removed the signature.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shoes_vz.core.host_defaults import paths_for

ENTITLEMENT = "com.apple.security.virtualization"
LAUNCHER_MARK = b"Resources/Python.app/Contents/MacOS/"  # the path CPython's launcher (pythonw.c) builds
PYTHON_APP = Path("Resources") / "Python.app" / "Contents" / "MacOS"
RECORD_NAME = "signed-python.json"
_PROC_PIDPATHINFO_MAXSIZE = 4096


def _framework_version_dir(path: Path) -> Path | None:
    """`…/X.framework/Versions/V` when `path` lies in that framework's `bin/`, else None."""
    parts = path.parts
    for i in range(len(parts) - 3):
        if parts[i].endswith(".framework") and parts[i + 1] == "Versions" and parts[i + 3] == "bin":
            return Path(*parts[: i + 3])
    return None


def _is_launcher(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return LAUNCHER_MARK in f.read(4 << 20)
    except OSError:
        return False


def resolve_image(executable: str | None = None, framework: str | None = None,
                  base_prefix: str | None = None) -> Path:
    """The image the kernel runs for `executable` (default sys.executable), from the files alone."""
    framework = sysconfig.get_config_var("PYTHONFRAMEWORK") if framework is None else framework
    real = Path(os.path.realpath(executable or sys.executable))
    if not framework:
        return real
    version_dir = _framework_version_dir(real)
    if version_dir is not None:  # the framework's own bin/: a launcher
        return version_dir / PYTHON_APP / framework
    if _is_launcher(real):       # a copy of the launcher (stdlib venv --copies): it execs the base's app
        return Path(base_prefix or sys.base_prefix) / PYTHON_APP / framework
    return real                  # virtualenv's copy of Python.app's binary: this file runs


def running_image(pid: int | None = None) -> Path:
    """The executable image of process `pid` (default: this one), as the kernel knows it."""
    pid = os.getpid() if pid is None else pid
    if sys.platform == "darwin":
        libproc = ctypes.CDLL("/usr/lib/libproc.dylib", use_errno=True)
        buf = ctypes.create_string_buffer(_PROC_PIDPATHINFO_MAXSIZE)
        n = libproc.proc_pidpath(pid, buf, _PROC_PIDPATHINFO_MAXSIZE)
        if n <= 0:
            raise OSError(ctypes.get_errno(), f"proc_pidpath({pid}) failed")
        return Path(os.fsdecode(buf.value))
    return Path(os.readlink(f"/proc/{pid}/exe"))


def this_image() -> Path:
    """This interpreter's image: the kernel's answer, or — when it cannot be asked — the files'."""
    try:
        return running_image()
    except (OSError, AttributeError):
        return resolve_image()


def fingerprint(image: Path) -> str:
    h = hashlib.sha256()
    with open(image, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class SignRecord:
    """What `sign-python` signed: the image, its sha256 afterwards, the interpreter, when."""

    image: str
    sha256: str
    python: str
    signed_at: float

    @classmethod
    def of(cls, image: Path) -> SignRecord:
        return cls(str(image), fingerprint(image), sys.version.split()[0], time.time())

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.signed_at))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> SignRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(str(data["image"]), str(data["sha256"]), str(data["python"]), float(data["signed_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def record_path(home: Path) -> Path:
    """Where `sign-python` keeps its record for the user whose home this is (their state directory)."""
    return paths_for(sys.platform, home).state_dir / RECORD_NAME


def lost_signature(image: Path, record: SignRecord | None) -> str:
    """Why `image` lacks the entitlement although sign-python ran, as far as the record tells ("" if not)."""
    if record is None:
        return ""
    if record.image != str(image):
        return (f"sign-python signed {record.image} on {record.when()}, but this interpreter runs {image}: sign the "
                "interpreter the agent runs (run sign-python with it)")
    try:
        changed = fingerprint(image) != record.sha256
    except OSError:
        changed = True
    if changed:
        return (f"sign-python signed it on {record.when()} (Python {record.python}) and the image has changed since: "
                "an interpreter upgrade (brew upgrade, a python.org installer, uv python upgrade) replaces it "
                "unsigned; re-run sign-python after every interpreter upgrade")
    return ""


def entitlement_problem() -> str | None:
    """The entitlement error of this process, or None; VM-free: an empty configuration reports it first
    (pyobjc #434). Needs PyObjC (macOS)."""
    import Virtualization  # type: ignore[import-not-found]

    ok, err = Virtualization.VZVirtualMachineConfiguration.new().validateWithError_(None)
    if ok or err is None:
        return None
    text = str(err.localizedDescription())
    return text if ENTITLEMENT in text else None


def probe_main() -> int:
    """`python -m shoes_vz.macos.interpreter`: print this process's image and entitlement problem (JSON)."""
    try:
        problem = entitlement_problem()
    except Exception as e:  # e.g. no PyObjC: say so, do not crash
        problem = f"cannot ask Virtualization.framework: {type(e).__name__}: {e}"
    print(json.dumps({"image": str(this_image()), "problem": problem}))
    return 0


__all__ = ["ENTITLEMENT", "SignRecord", "entitlement_problem", "fingerprint", "lost_signature", "record_path",
           "resolve_image", "running_image", "this_image"]

if __name__ == "__main__":
    sys.exit(probe_main())
