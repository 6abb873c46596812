"""Bundle creation by clone (DESIGN §5): error mapping, the dev-only copy, and real XFS reflinks."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from xfs import extents, require_xfs, xfs_reflink_mount

from shoes_vz.core.errors import CloneError
from shoes_vz.vm import clone
from shoes_vz.vm.clone import CloneCopyWarning, can_reflink, clone_file, filesystem_type, mount_point

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FICLONE path is Linux's")


def _failing_ioctl(code: int) -> Any:
    def ioctl(fd: int, request: int, arg: int) -> None:
        assert request == clone.FICLONE
        raise OSError(code, os.strerror(code))

    return ioctl


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "template" / "Disk.img"
    p.parent.mkdir()
    with open(p, "wb") as f:
        f.write(b"boot" * 1024)
        f.seek(64 << 20)
        f.write(b"tail")
    p.chmod(0o444)  # templates are frozen read-only
    (tmp_path / "runners").mkdir()
    return p


@linux_only
@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY])
def test_unsupported_volume_names_volume_and_fix(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(code))
    dst = tmp_path / "runners" / "Disk.img"
    with pytest.raises(CloneError) as ei:
        clone_file(src, dst)
    msg = str(ei.value)
    assert str(mount_point(tmp_path)) in msg
    assert filesystem_type(tmp_path) in msg
    assert "does not support copy-on-write" in msg
    assert "reflink=1" in msg and "APFS" in msg and "btrfs" in msg
    assert errno.errorcode[code] in msg
    assert not dst.exists(), "a half-made clone must be removed"


@linux_only
def test_exdev_names_both_volumes_and_fix(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(errno.EXDEV))
    # make the two volumes differ in the message the way they would on a real host
    volumes = {src.parent: Path("/Volumes/Templates"), tmp_path / "runners": Path("/Volumes/Runners")}
    monkeypatch.setattr(clone, "mount_point", lambda p: volumes.get(Path(p), Path("/")))
    dst = tmp_path / "runners" / "Disk.img"
    with pytest.raises(CloneError) as ei:
        clone_file(src, dst)
    msg = str(ei.value)
    assert "different volumes" in msg
    assert "/Volumes/Templates" in msg and "/Volumes/Runners" in msg
    assert "one volume" in msg and "reflink=1" in msg
    assert not dst.exists()


@linux_only
def test_other_errors_are_clear_and_clean_up(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dst = tmp_path / "runners" / "Disk.img"
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(errno.ENOSPC))
    with pytest.raises(CloneError, match="no space left"):
        clone_file(src, dst)
    assert not dst.exists()
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(errno.EIO))
    with pytest.raises(CloneError, match="EIO"):
        clone_file(src, dst)
    assert not dst.exists()


def test_existing_destination_is_refused_and_kept(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "runners" / "Disk.img"
    dst.write_bytes(b"someone else's")
    with pytest.raises(CloneError, match="already exists"):
        clone_file(src, dst, allow_copy=True)
    assert dst.read_bytes() == b"someone else's"


def test_missing_source(tmp_path: Path) -> None:
    (tmp_path / "runners").mkdir()
    with pytest.raises(CloneError, match="No such file"):
        clone_file(tmp_path / "nope", tmp_path / "runners" / "x")
    assert not (tmp_path / "runners" / "x").exists()


@linux_only
def test_no_silent_copy_without_allow_copy(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(errno.EOPNOTSUPP))
    copied: list[Any] = []
    monkeypatch.setattr(clone, "_sparse_copy", lambda *a: copied.append(a))
    with pytest.raises(CloneError):
        clone_file(src, tmp_path / "runners" / "Disk.img")
    assert copied == []


@linux_only
@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EXDEV])
def test_allow_copy_warns_and_copies_sparse(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(code))
    dst = tmp_path / "runners" / "Disk.img"
    with pytest.warns(CloneCopyWarning, match="DEV ONLY.*FULL COPY"):
        assert clone_file(src, dst, allow_copy=True) == "copy"
    assert any("DEV ONLY" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert dst.read_bytes() == src.read_bytes()
    assert os.access(dst, os.W_OK) and dst.stat().st_mode & 0o200
    # a 64 MiB sparse file with 4 KiB + 4 bytes of data stays sparse
    assert dst.stat().st_blocks * 512 < 1 << 20


@linux_only
def test_copy_failure_removes_partial_destination(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clone.fcntl, "ioctl", _failing_ioctl(errno.EOPNOTSUPP))

    def half_copy(sfd: int, dfd: int, progress: Any = None) -> None:
        os.write(dfd, b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clone, "_sparse_copy", half_copy)
    dst = tmp_path / "runners" / "Disk.img"
    with pytest.warns(CloneCopyWarning), pytest.raises(CloneError, match="no space"):
        clone_file(src, dst, allow_copy=True)
    assert not dst.exists()


def test_mount_point_walks_up_to_the_volume_root(tmp_path: Path) -> None:
    mp = mount_point(tmp_path / "does" / "not" / "exist")
    assert mp == mount_point(tmp_path)
    assert mp.stat().st_dev == tmp_path.stat().st_dev
    assert mp == mp.parent or mp.parent.stat().st_dev != mp.stat().st_dev


def _reflink_oracle(directory: Path) -> bool:
    """Independent answer: can coreutils' `cp --reflink=always` clone here?"""
    a, b = directory / ".oracle-a", directory / ".oracle-b"
    a.write_bytes(b"x" * 8192)
    try:
        return subprocess.run(["cp", "--reflink=always", str(a), str(b)], capture_output=True).returncode == 0
    finally:
        a.unlink()
        b.unlink(missing_ok=True)


@linux_only
def test_can_reflink_matches_the_filesystem_of_tmp(tmp_path: Path) -> None:
    fstype = filesystem_type(tmp_path)
    got = can_reflink(tmp_path)
    if fstype in {"ext2", "ext3", "ext4", "tmpfs", "vfat", "nfs", "nfs4"}:
        assert got is False, fstype
    elif fstype == "btrfs":
        assert got is True
    assert got == _reflink_oracle(tmp_path), fstype
    assert sorted(os.listdir(tmp_path)) == [], "the probe leaves nothing behind"


# -- real XFS reflink ---------------------------------------------------------------------------


def _make_sparse(path: Path, size: int, data_mib: int = 4) -> None:
    """A sparse file of `size` bytes with `data_mib` MiB of real data at its start, middle and end."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, size - (data_mib << 20)):
            f.seek(offset)
            for _ in range(data_mib):
                f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


@linux_only
def test_xfs_reflink_clone_shares_extents_and_costs_the_same_for_1_and_64_gib() -> None:
    require_xfs()
    with xfs_reflink_mount(size_gib=2) as mnt:
        assert filesystem_type(mnt) == "xfs"
        assert can_reflink(mnt) is True
        templates, runners = mnt / "templates", mnt / "runners"
        templates.mkdir()
        runners.mkdir()
        timings: dict[int, float] = {}
        for gib in (1, 64):
            src = templates / f"Disk-{gib}G.img"
            _make_sparse(src, gib << 30)
            src.chmod(0o444)
            dst = runners / f"Disk-{gib}G.img"
            started = time.perf_counter()
            assert clone_file(src, dst) == "clone"
            timings[gib] = time.perf_counter() - started

            assert dst.stat().st_size == gib << 30
            assert dst.stat().st_mode & 0o200, "the clone must be writable"
            src_ext, dst_ext = extents(src), extents(dst)
            assert dst_ext, "the clone has data extents"
            assert all(e.shared for e in dst_ext), [e for e in dst_ext if not e.shared]
            assert all(e.shared for e in src_ext)
            assert [(e.logical, e.physical, e.length) for e in dst_ext] == [
                (e.logical, e.physical, e.length) for e in src_ext
            ], "same physical blocks: nothing was copied"
            assert sum(e.length for e in dst_ext) == 12 << 20
            with open(dst, "rb") as a, open(src, "rb") as b:
                a.seek((gib << 30) // 2)
                b.seek((gib << 30) // 2)
                assert a.read(1 << 20) == b.read(1 << 20)

            # writes to the clone are private (copy on write)
            with open(dst, "r+b") as f:
                f.write(b"private")
            with open(src, "rb") as f:
                assert f.read(7) != b"private"

        print(f"\nXFS reflink clone: 1 GiB {timings[1] * 1000:.2f} ms, 64 GiB {timings[64] * 1000:.2f} ms")
        # cost is per extent, not per byte: both are instant (timings belong to benchmarks)
        assert timings[1] < 1.0 and timings[64] < 1.0, timings


@linux_only
def test_xfs_exdev_between_two_volumes(tmp_path: Path) -> None:
    require_xfs()
    src = tmp_path / "Disk.img"
    src.write_bytes(b"x" * 4096)
    with xfs_reflink_mount(size_gib=1) as mnt:
        with pytest.raises(CloneError) as ei:
            clone_file(src, mnt / "Disk.img")
        msg = str(ei.value)
        assert "different volumes" in msg, msg
        assert f"{mnt} (xfs)" in msg and str(mount_point(tmp_path)) in msg
        assert not (mnt / "Disk.img").exists()


def test_xfs_helper_cleans_up() -> None:
    require_xfs()
    with xfs_reflink_mount(size_gib=1) as mnt:
        work = mnt.parent
        (mnt / "f").write_bytes(b"x")
    assert not work.exists()
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(work) not in out
    assert shutil.which("mkfs.xfs")


# -- the macOS path, with clonefile(2) faked (the real one needs APFS) ------------------------------


def _fake_clonefile(code: int, calls: list[tuple[bytes, bytes, int]]) -> Any:
    import ctypes

    def clonefile(src: bytes, dst: bytes, flags: int) -> int:
        calls.append((src, dst, flags))
        if code:
            ctypes.set_errno(code)
            return -1
        shutil.copyfile(src, dst)  # what a clone looks like from outside: same bytes, same mode
        shutil.copymode(src, dst)
        return 0

    return lambda: clonefile


@pytest.mark.parametrize("code", [0, errno.EXDEV, errno.ENOTSUP, errno.EEXIST])
def test_darwin_clonefile_mapping(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    calls: list[tuple[bytes, bytes, int]] = []
    monkeypatch.setattr(clone.sys, "platform", "darwin")
    monkeypatch.setattr(clone, "_libc_clonefile", _fake_clonefile(code, calls))
    dst = tmp_path / "runners" / "Disk.img"
    if code == 0:
        assert clone_file(src, dst) == "clone"
        assert dst.read_bytes() == src.read_bytes()
        assert dst.stat().st_mode & 0o200, "the clone of a read-only template must be writable"
    else:
        expected = {errno.EXDEV: "different volumes", errno.ENOTSUP: "does not support copy-on-write",
                    errno.EEXIST: "already exists"}[code]
        with pytest.raises(CloneError, match=expected):
            clone_file(src, dst)
        assert not dst.exists()
    assert calls == [(os.fsencode(src), os.fsencode(dst), clone.CLONE_NOFOLLOW | clone.CLONE_NOOWNERCOPY)]


def test_darwin_allow_copy(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clone.sys, "platform", "darwin")
    monkeypatch.setattr(clone, "_libc_clonefile", _fake_clonefile(errno.ENOTSUP, []))
    dst = tmp_path / "runners" / "Disk.img"
    with pytest.warns(CloneCopyWarning, match="DEV ONLY"):
        assert clone_file(src, dst, allow_copy=True) == "copy"
    assert dst.read_bytes() == src.read_bytes()
