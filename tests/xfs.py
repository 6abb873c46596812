"""A loop-mounted XFS filesystem with reflink, for tests that need real copy-on-write clones.

    with xfs_reflink_mount(size_gib=2) as mnt:
        ...

Needs root, `mkfs.xfs` (xfsprogs), `losetup` and loop devices. `require_xfs()` turns a missing
prerequisite into a skip outside CI and a FAILURE when `CI` is set (DESIGN §11).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# linux/fiemap.h
FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
# fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved
_FIEMAP_HEAD = struct.Struct("=QQLLLL")
_FIEMAP_EXTENT = struct.Struct("=QQQQQLLLL")  # logical, physical, length, reserved64[2], flags, reserved[3]


def xfs_unavailable() -> str | None:
    """Why an XFS loop mount cannot be made here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "XFS loop mount needs root"
    for tool in ("mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install xfsprogs util-linux mount)"
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        return "no loop devices (/dev/loop-control)"
    return None


def require_xfs() -> None:
    from stack_fixtures import require  # only under pytest (benchmarks import this module too)

    reason = xfs_unavailable()
    require(reason is None, f"an XFS reflink loop mount ({reason})")


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def xfs_reflink_mount(size_gib: int = 2) -> Iterator[Path]:
    """Yield the mount point of a fresh `mkfs.xfs -m reflink=1` filesystem on a sparse loop image.

    Always unmounts, detaches the loop device and deletes the image, even when the body fails.
    """
    work = Path(tempfile.mkdtemp(prefix="shoes-vz-xfs-"))
    image, mnt = work / "xfs.img", work / "mnt"
    mnt.mkdir()
    loopdev = ""
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size_gib << 30)
        _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        loopdev = _run("losetup", "--find", "--show", str(image)).strip()
        _run("mount", "-t", "xfs", loopdev, str(mnt))
        mounted = True
        yield mnt
    finally:
        if mounted:
            for attempt in range(20):
                if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1 * (attempt + 1))
            else:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if loopdev:
            subprocess.run(["losetup", "-d", loopdev], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def shared(self) -> bool:
        return bool(self.flags & FIEMAP_EXTENT_SHARED)


def extents(path: Path | str, max_extents: int = 512) -> list[Extent]:
    """The file's extents from the FIEMAP ioctl (what `filefrag -v` shows)."""
    out: list[Extent] = []
    start = 0
    with open(path, "rb") as f:
        while True:
            head = _FIEMAP_HEAD.pack(start, 0xFFFFFFFFFFFFFFFF - start, FIEMAP_FLAG_SYNC, 0, max_extents, 0)
            buf = bytearray(head + bytes(_FIEMAP_EXTENT.size * max_extents))
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP_HEAD.unpack_from(buf)[3]
            last = False
            for i in range(mapped):
                at = _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size
                lg, ph, ln, _, _, fl, _, _, _ = _FIEMAP_EXTENT.unpack_from(buf, at)
                out.append(Extent(lg, ph, ln, fl))
                last = bool(fl & FIEMAP_EXTENT_LAST)
            if mapped == 0 or last:
                return out
            start = out[-1].logical + out[-1].length
