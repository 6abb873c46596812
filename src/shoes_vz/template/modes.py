"""Read-only and back: the modes (and, on macOS, the `uchg` flag) that make a template frozen.

Frozen: files 0444 (0555 when executable), directories 0555, and `chflags uchg` where the platform
has it (so even root's tools cannot change a template by accident). Files that hold secrets
(`is_private`: the disk image with the guest's host private key on it, a saved state with the guest's
memory, any private key) are 0400: readable by the agent's user, who owns them, and nobody else.
Drafts and retired versions are made writable again before they are changed or removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

IMMUTABLE: int = getattr(stat, "UF_IMMUTABLE", 0)
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
PRIVATE_NAMES = frozenset({"Disk.img", "State.save"})


def is_private(path: str) -> bool:
    """Whether a template's (or warm slot's) file holds secrets and so stays 0400 when frozen."""
    name = os.path.basename(path)
    return name in PRIVATE_NAMES or name.endswith("_key") or (name.startswith("id_") and not name.endswith(".pub"))


def frozen_mode(path: str) -> int:
    """The mode `make_read_only` gives the file at `path`."""
    if is_private(path):
        return 0o400
    return 0o555 if os.stat(path).st_mode & 0o111 else 0o444


def has_flags() -> bool:
    """Whether this platform has BSD file flags (`chflags uchg`): macOS yes, Linux no."""
    return IMMUTABLE != 0 and hasattr(os, "chflags")


def _set_immutable(path: str, on: bool) -> None:
    if not has_flags():
        return
    flags: int = getattr(os.lstat(path), "st_flags", 0)
    new = flags | IMMUTABLE if on else flags & ~IMMUTABLE
    if new != flags:
        os.chflags(path, new, follow_symlinks=False)  # type: ignore[attr-defined,unused-ignore]


def make_read_only(root: Path) -> None:
    """Files 0444 (0555 when executable, 0400 when private), directories 0555, then `uchg` on
    everything (children first)."""
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, frozen_mode(p))
                _set_immutable(p, True)
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
                _set_immutable(p, True)
    os.chmod(root, 0o555)
    _set_immutable(str(root), True)


def make_writable(root: Path) -> None:
    """Undo `make_read_only`: clear `uchg` (parents first), owner-writable files and directories."""
    _unlock_one(str(root), is_dir=True)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                _unlock_one(p, is_dir=True)
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                _unlock_one(p, is_dir=False)


def _unlock_one(path: str, *, is_dir: bool) -> None:
    _set_immutable(path, False)
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    os.chmod(path, mode | (0o700 if is_dir else 0o600))


def remove_tree(root: Path) -> None:
    """Remove a directory tree even when it is frozen; a missing tree is fine."""
    if not os.path.lexists(root):
        return
    with contextlib.suppress(OSError):
        make_writable(root)
    shutil.rmtree(root, ignore_errors=True)


def move_dir(src: Path, dst: Path) -> None:
    """`rename(2)` a possibly frozen directory into another parent, keeping it frozen.

    Moving a directory to a new parent rewrites its `..` entry, which needs the directory writable
    and not `uchg`; it is unlocked for the rename only (contents stay frozen all along).
    """
    mode = stat.S_IMODE(os.lstat(src).st_mode)
    frozen = not mode & WRITE_BITS
    if frozen:
        _unlock_one(str(src), is_dir=True)
    try:
        os.rename(src, dst)
    except BaseException:
        if frozen:
            os.chmod(src, mode)
            _set_immutable(str(src), True)
        raise
    if frozen:
        os.chmod(dst, mode)
        _set_immutable(str(dst), True)


__all__ = ["frozen_mode", "has_flags", "is_private", "make_read_only", "make_writable", "move_dir", "remove_tree"]
