"""Copy-on-write clones of template files into runner bundles (DESIGN §5).

One entry point, `clone_file`: `clonefile(2)` on macOS (APFS), `ioctl(FICLONE)` on Linux (XFS
with reflink, btrfs). A volume that cannot clone is a hard `CloneError` that names the volume and
the fix — never a silent full copy. `allow_copy=True` is a dev-only escape hatch that copies
(sparse-aware) and warns loudly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from shoes_vz.core.errors import CloneError

log = logging.getLogger(__name__)

FICLONE = getattr(fcntl, "FICLONE", 0x40049409)  # _IOW(0x94, 9, int)
CLONE_NOFOLLOW = 0x0001
CLONE_NOOWNERCOPY = 0x0002

# errnos that mean "this volume cannot clone" (FICLONE gives EINVAL/ENOTTY on some filesystems)
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTTY}
_COPY_CHUNK = 8 << 20

Method = Literal["clone", "copy"]
CopyProgress = Callable[[int, int], None]
"""(bytes done, bytes total) of a full copy (allow_copy); a clone is instant and reports nothing."""


class CloneCopyWarning(UserWarning):
    """A full copy was made instead of a clone (allow_copy, dev only)."""


# -- volume facts for error messages -----------------------------------------------------------


def mount_point(path: Path | str) -> Path:
    """The mount point of the volume holding `path` (or its nearest existing ancestor)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    p = p.resolve()
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def _unescape_mount(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: Path | str) -> str:
    """The filesystem type of the volume holding `path`, or "unknown"."""
    mp = str(mount_point(path))
    if sys.platform.startswith("linux"):
        fstype = "unknown"
        with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and _unescape_mount(fields[1]) == mp:
                    fstype = fields[2]  # the last mount on a point is the visible one
        return fstype
    if sys.platform == "darwin":
        return _darwin_fstype(mp)
    return "unknown"


def _darwin_fstype(path: str) -> str:
    # struct statfs (64-bit inode variant): f_fstypename is char[16] at offset 72.
    class _Statfs(ctypes.Structure):
        _fields_ = [
            ("f_bsize", ctypes.c_uint32), ("f_iosize", ctypes.c_int32),
            ("f_blocks", ctypes.c_uint64), ("f_bfree", ctypes.c_uint64), ("f_bavail", ctypes.c_uint64),
            ("f_files", ctypes.c_uint64), ("f_ffree", ctypes.c_uint64),
            ("f_fsid", ctypes.c_int32 * 2), ("f_owner", ctypes.c_uint32), ("f_type", ctypes.c_uint32),
            ("f_flags", ctypes.c_uint32), ("f_fssubtype", ctypes.c_uint32),
            ("f_fstypename", ctypes.c_char * 16), ("f_mntonname", ctypes.c_char * 1024),
            ("f_mntfromname", ctypes.c_char * 1024), ("f_flags_ext", ctypes.c_uint32),
            ("f_reserved", ctypes.c_uint32 * 7),
        ]

    try:
        libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
        try:
            statfs = libc["statfs$INODE64"]  # x86_64 exports the 64-bit-inode layout under this name
        except AttributeError:
            statfs = libc.statfs  # arm64 has only that layout
        buf = _Statfs()
        if statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
            return "unknown"
        return buf.f_fstypename.decode(errors="replace") or "unknown"
    except (OSError, AttributeError):
        return "unknown"


def _volume(path: Path | str) -> str:
    try:
        return f"{mount_point(path)} ({filesystem_type(path)})"
    except OSError:
        return f"{path} (volume unknown)"


_FIX = (
    "put the templates and runners directories on one volume that can clone: APFS on macOS; "
    "XFS made with `mkfs.xfs -m reflink=1` or btrfs on Linux"
)


def _error(e: OSError, src: Path, dst: Path) -> CloneError:
    code = e.errno or 0
    name = errno.errorcode.get(code, str(code))
    if code == errno.EXDEV:
        return CloneError(
            f"cannot clone {src} to {dst}: they are on different volumes — the template on "
            f"{_volume(src.parent)}, the runner bundle on {_volume(dst.parent)} (EXDEV). "
            f"A copy-on-write clone needs both on one volume. Fix: {_FIX}."
        )
    if code in _UNSUPPORTED:
        return CloneError(
            f"cannot clone {src} to {dst}: volume {_volume(dst.parent)} does not support copy-on-write "
            f"clones ({name}). Fix: {_FIX}. (Development only: allow_copy makes a full copy instead.)"
        )
    if code == errno.EEXIST:
        return CloneError(f"cannot clone to {dst}: it already exists (a leftover bundle?); remove it first")
    if code == errno.ENOENT:
        return CloneError(f"cannot clone {src} to {dst}: {e.strerror} ({e.filename or src})")
    if code == errno.ENOSPC:
        return CloneError(f"cannot clone {src} to {dst}: no space left on {_volume(dst.parent)}")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CloneError(
            f"cannot clone {src} to {dst}: {e.strerror} ({name}); the runners directory "
            f"{dst.parent} must be writable and the template readable by the agent"
        )
    return CloneError(f"cannot clone {src} to {dst}: {e.strerror or e} ({name})")


# -- the clone ----------------------------------------------------------------------------------


def clone_file(
    src: Path | str, dst: Path | str, *, allow_copy: bool = False, progress: CopyProgress | None = None
) -> Method:
    """Clone `src` to the new file `dst` (which must not exist). Returns "clone", or "copy" when
    `allow_copy` let a volume that cannot clone fall back to a full copy (dev only; warns).

    The clone is writable by its owner even though the template is read-only. On any failure a
    partly written `dst` is removed and CloneError raised.
    """
    src, dst = Path(src), Path(dst)
    if sys.platform == "darwin":
        return _clone_darwin(src, dst, allow_copy, progress)
    return _clone_ficlone(src, dst, allow_copy, progress)


def _clone_ficlone(src: Path, dst: Path, allow_copy: bool, progress: CopyProgress | None) -> Method:
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _error(e, src, dst) from e
    try:
        try:
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise _error(e, src, dst) from e  # not ours: never remove a dst we did not create
        try:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
                return "clone"
            except OSError as e:
                if not (allow_copy and (e.errno == errno.EXDEV or e.errno in _UNSUPPORTED)):
                    raise _error(e, src, dst) from e
                _warn_copy(src, dst, e)
                try:
                    _sparse_copy(sfd, dfd, progress)
                except OSError as e2:
                    raise _error(e2, src, dst) from e2
                return "copy"
        except BaseException:
            os.close(dfd)
            dfd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            raise
        finally:
            if dfd >= 0:
                os.close(dfd)
    finally:
        os.close(sfd)


_clonefile = None


def _libc_clonefile():  # type: ignore[no-untyped-def]
    global _clonefile
    if _clonefile is None:
        libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
        fn = libc.clonefile
        fn.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32)
        fn.restype = ctypes.c_int
        _clonefile = fn
    return _clonefile


def _clone_darwin(src: Path, dst: Path, allow_copy: bool, progress: CopyProgress | None) -> Method:
    rc = _libc_clonefile()(os.fsencode(src), os.fsencode(dst), CLONE_NOFOLLOW | CLONE_NOOWNERCOPY)
    if rc == 0:
        try:
            _make_writable(dst)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            raise _error(e, src, dst) from e
        return "clone"
    code = ctypes.get_errno()
    err = OSError(code, os.strerror(code), str(src), None, str(dst))
    # clonefile(2) is atomic: on failure there is no dst of ours to remove
    if not (allow_copy and (code == errno.EXDEV or code in _UNSUPPORTED)):
        raise _error(err, src, dst) from err
    _warn_copy(src, dst, err)
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e2:
        raise _error(e2, src, dst) from e2
    try:
        try:
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e2:
            raise _error(e2, src, dst) from e2
        try:
            _sparse_copy(sfd, dfd, progress)
        except BaseException as e3:
            os.close(dfd)
            dfd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            if isinstance(e3, OSError):
                raise _error(e3, src, dst) from e3
            raise
        finally:
            if dfd >= 0:
                os.close(dfd)
    finally:
        os.close(sfd)
    return "copy"


def _make_writable(path: Path) -> None:
    # clonefile copies mode and BSD flags: the template is 0444 (+uchg), the bundle's copy must not be.
    st = os.lstat(path)
    flags: int = getattr(st, "st_flags", 0)
    locked = getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "UF_APPEND", 0)
    chflags = getattr(os, "chflags", None)
    if chflags is not None and flags & locked:
        chflags(path, flags & ~locked)
    os.chmod(path, (st.st_mode & 0o777) | 0o600)


def _warn_copy(src: Path, dst: Path, e: OSError) -> None:
    msg = (
        f"DEV ONLY: {_volume(dst.parent)} cannot clone {src} ({errno.errorcode.get(e.errno or 0, e.errno)}); "
        f"making a FULL COPY because allow_copy is set. Never use allow_copy in production: every "
        f"runner then costs the template's full disk size and copy time. Fix: {_FIX}."
    )
    log.warning("%s", msg)
    warnings.warn(msg, CloneCopyWarning, stacklevel=4)


def _sparse_copy(sfd: int, dfd: int, progress: CopyProgress | None = None) -> None:
    """Copy only the data regions of `sfd` (SEEK_DATA/SEEK_HOLE), so a sparse disk stays sparse."""
    size = os.fstat(sfd).st_size
    os.ftruncate(dfd, size)
    report = None if progress is None else (lambda done: progress(done, size))
    seek_data, seek_hole = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        _copy_range(sfd, dfd, 0, size, report)
        return
    pos = 0
    while pos < size:
        try:
            start = os.lseek(sfd, pos, seek_data)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no more data: the rest is a hole
                break
            if e.errno == errno.EINVAL and pos == 0:  # the filesystem has no SEEK_DATA
                _copy_range(sfd, dfd, 0, size, report)
                return
            raise
        end = os.lseek(sfd, start, seek_hole)
        _copy_range(sfd, dfd, start, end, report)
        pos = end
    if progress is not None:
        progress(size, size)


def _copy_range(sfd: int, dfd: int, start: int, end: int, report: Callable[[int], None] | None = None) -> None:
    pos = start
    cfr = getattr(os, "copy_file_range", None)
    while pos < end and cfr is not None:
        try:
            n = cfr(sfd, dfd, min(_COPY_CHUNK, end - pos), pos, pos)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
                break  # not across these filesystems: fall back to read/write below
            raise
        if n == 0:
            return  # src shrank under us
        pos += n
        if report is not None:
            report(pos)
    while pos < end:
        chunk = os.pread(sfd, min(_COPY_CHUNK, end - pos), pos)
        if not chunk:
            return
        written = 0
        while written < len(chunk):
            written += os.pwrite(dfd, chunk[written:], pos + written)
        pos += len(chunk)
        if report is not None:
            report(pos)


def can_reflink(directory: Path | str) -> bool:
    """Whether `directory`'s volume can make copy-on-write clones (probe with a tiny temp file)."""
    fd, probe = tempfile.mkstemp(prefix=".shoes-vz-reflink-probe-", dir=directory)
    target = f"{probe}.clone"
    try:
        os.write(fd, b"shoes-vz reflink probe\n" * 256)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            clone_file(probe, target)
        except CloneError:
            return False
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        for p in (probe, target):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def check_clone(src: Path | str, dst_dir: Path | str) -> None:
    """Clone `src` into `dst_dir` as a runner's bundle is made, then remove the clone. CloneError —
    naming the volumes, their filesystems and the fix — when runners cannot be made that way."""
    dst_dir = Path(dst_dir)
    target = dst_dir / f".shoes-vz-clone-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        clone_file(src, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
