"""The few Linux system calls the sim needs and Python lacks (mount, pivot_root, prctl, unshare).

ctypes on the C library; every failure is an OSError with errno and the call that failed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys
from pathlib import Path

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41}  # asm-generic numbers on arm64

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _lib() -> ctypes.CDLL:
    if _libc is None:
        raise OSError(38, "namespaced sim guests need Linux")
    return _libc


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    enc = os.fsencode
    rc = _lib().mount(enc(source), enc(target), enc(fstype) if fstype else None, ctypes.c_ulong(flags),
                      enc(data) if data else None)
    _check(rc, f"mount {source} on {target} ({fstype or 'bind'})")


def bind(source: str, target: str, *, read_only: bool = True, extra: int = MS_NOSUID | MS_NODEV) -> None:
    """Bind `source` on `target` (one mount, not its submounts); read-only and nosuid by default."""
    mount(source, target, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | extra | (MS_RDONLY if read_only else 0)
    mount("none", target, None, flags)


def umount(target: str, flags: int = 0) -> None:
    _check(_lib().umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(38, f"pivot_root: unknown system call number on {platform.machine()}")
    _check(_lib().syscall(ctypes.c_long(number), os.fsencode(new_root), os.fsencode(put_old)),
           f"pivot_root {new_root}")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """PR_SET_PDEATHSIG: this process gets `sig` when the thread that started it ends (preexec_fn)."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no set-uid binary or file capability ever raises this process's rights."""
    if _libc is not None:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


CLONE_NEWNS = 0x00020000


def enter_guest_view(guest_dir: str, mount_point: str, uid: int | None) -> None:
    """In a child before exec (preexec_fn), as root: a mount namespace of its own in which `guest_dir`
    is `mount_point` (writable) and its `etc/passwd` and `etc/group` are /etc/passwd and /etc/group
    (the host's account database is never changed); no_new_privs (no set-uid binary raises anything
    it starts); then, given `uid`, that unprivileged user for good (the loopback sim's guest)."""
    lib = _lib()
    _check(lib.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # our binds stay ours
    bind(guest_dir, mount_point, read_only=False)
    bind(f"{mount_point}/etc/passwd", "/etc/passwd")
    bind(f"{mount_point}/etc/group", "/etc/group")
    no_new_privs()
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    die_with_parent()  # last: a change of credentials clears it


def package_env() -> dict[str, str]:
    """This environment, with this package importable by an interpreter started from it."""
    root = str(Path(__file__).resolve().parents[3])
    paths = [root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
