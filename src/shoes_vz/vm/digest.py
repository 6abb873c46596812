"""File digests (templates, saved states): streamed, sparse-aware and independent of the on-disk layout.

A file is cut into fixed 4 MiB chunks. Each chunk's digest is sha256 of its bytes; a chunk that is a
hole (SEEK_DATA/SEEK_HOLE) or all zeros is known without hashing — it is the constant zero-chunk
digest. The file digest is sha256 over (size, chunk digests), written `sha256c4m:<hex>`. So a 64 GiB
sparse `Disk.img` digests in milliseconds, and a fully allocated copy of the same bytes (a clone
that lost its holes, a copy across volumes) has the same digest.

Bare 64-hex digests (plain sha256 of the whole file, written by earlier `init-sim`) stay readable:
`matches` recomputes them the old way.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from shoes_vz.core.errors import TemplateError

ALGO = "sha256c4m"
CHUNK = 4 << 20
LEGACY = "sha256"

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as the work advances (holes count as done), for a progress bar."""


@functools.lru_cache(maxsize=4)
def _zero_chunk_digest(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


@functools.lru_cache(maxsize=1)
def _zeros() -> bytes:
    return bytes(CHUNK)


def file_digest(path: Path, progress: Progress | None = None) -> str:
    """`sha256c4m:<hex>` of `path` (see the module docstring)."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        outer = hashlib.sha256(ALGO.encode() + b"\0" + size.to_bytes(8, "big"))
        pos = 0
        next_data = _next_data(fd, 0, size)
        while pos < size:
            length = min(CHUNK, size - pos)
            if next_data >= pos + length:
                outer.update(_zero_chunk_digest(length))  # a whole hole: nothing to read
            else:
                chunk = os.pread(fd, length, pos)
                if len(chunk) != length:
                    raise TemplateError(f"{path} changed size while it was digested")
                zero = chunk == _zeros()[:length]
                outer.update(_zero_chunk_digest(length) if zero else hashlib.sha256(chunk).digest())
            pos += length
            if next_data < pos:
                next_data = _next_data(fd, pos, size)
            if progress is not None:
                progress(pos, size)
    return f"{ALGO}:{outer.hexdigest()}"


def _next_data(fd: int, pos: int, size: int) -> int:
    """Offset of the first data byte at or after `pos`; `size` when only a hole remains. Where the
    filesystem cannot tell, every byte counts as data (the chunk is read and checked for zeros)."""
    seek_data = getattr(os, "SEEK_DATA", None)
    if seek_data is None or pos >= size:
        return pos if pos < size else size
    try:
        return os.lseek(fd, pos, seek_data)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return size
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return pos
        raise


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, size)
    return h.hexdigest()


def algorithm_of(recorded: str) -> str:
    """The algorithm a recorded digest was made with; TemplateError for an unknown form."""
    if ":" in recorded:
        algo, _, hexpart = recorded.partition(":")
        if algo == ALGO and _is_hex64(hexpart):
            return ALGO
        raise TemplateError(f"unknown digest {recorded!r} (expected {ALGO}:<64 hex>)")
    if _is_hex64(recorded):
        return LEGACY
    raise TemplateError(f"malformed digest {recorded!r} (expected {ALGO}:<64 hex>)")


def digest_with(algo: str, path: Path, progress: Progress | None = None) -> str:
    return file_digest(path, progress) if algo == ALGO else sha256_file(path, progress)


def matches(path: Path, recorded: str, progress: Progress | None = None) -> bool:
    """Whether `path` has the recorded digest (either form)."""
    return digest_with(algorithm_of(recorded), path, progress) == recorded


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


__all__ = ["ALGO", "CHUNK", "Progress", "algorithm_of", "digest_with", "file_digest", "matches"]
