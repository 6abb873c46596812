"""A sparse-aware file digest: a 64 GiB sparse disk digests in milliseconds.

Chunks that are holes or all zeros count as one constant digest, so the result depends on the
bytes only, not on how the filesystem laid them out (a clone, a sparse copy and a full copy agree).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 4 * 1024 * 1024
ALGO = "sha256c4m"
_ZERO = hashlib.sha256(bytes(CHUNK)).digest()


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the regions holding data; the whole file where SEEK_DATA is unsupported."""
    if not hasattr(os, "SEEK_DATA"):
        return [(0, size)]
    ranges, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains (or the filesystem cannot tell)
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, end))
        pos = end
    return ranges


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    outer = hashlib.sha256(size.to_bytes(8, "big"))
    with path.open("rb") as f:
        fd = f.fileno()
        ranges = _data_ranges(fd, size)
        for index in range((size + CHUNK - 1) // CHUNK):
            lo, hi = index * CHUNK, min(size, (index + 1) * CHUNK)
            if not any(s < hi and e > lo for s, e in ranges):
                outer.update(_ZERO)
                continue
            data = os.pread(fd, hi - lo, lo)
            outer.update(_ZERO if not data.strip(b"\0") else hashlib.sha256(data).digest())
    return f"{ALGO}:{outer.hexdigest()}"
