"""The runners volume's free space against `agent.disk_reserve`.

A runner's disk is a clone: it costs nothing at first and grows as its job writes, up to the
template's disk size. So before each clone — and every condition re-check — the volume must keep a
reserve free: by default the largest template's disk size, enough for one runner's disk to fill
completely. Below it the clone is refused (`DiskBelowReserve`, a host condition: myshoes' retry goes
to another host) rather than let a job fill the volume under every VM on it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from shoes_vz.core.errors import DiskBelowReserve
from shoes_vz.template import Template


def free_bytes(path: Path) -> int:
    """Free bytes of the volume holding `path` for an unprivileged writer (blocking: a statvfs)."""
    return shutil.disk_usage(path).free


def template_disk_bytes(t: Template) -> int:
    """How large the template's disk may grow in a runner: its declared size, else the image's."""
    if t.meta.disk_bytes:
        return t.meta.disk_bytes
    try:
        return os.stat(t.path / "Disk.img").st_size
    except OSError:
        return 0


def reserve_bytes(setting: int | None, templates: Iterable[Template]) -> int:
    """`agent.disk_reserve`, or (unset) the largest template's disk size."""
    if setting is not None:
        return setting
    return max((template_disk_bytes(t) for t in templates), default=0)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def check_reserve(path: Path, reserve: int) -> int:
    """The free bytes at `path`; raises DiskBelowReserve (with the fix) when fewer than `reserve`."""
    free = free_bytes(path)
    if free < reserve:
        raise DiskBelowReserve(
            f"the runners volume of {path} has {_gib(free)} free, below the reserve of {_gib(reserve)} "
            "(agent.disk_reserve; default: the largest template's disk size, so one runner's disk can fill)")
    return free
