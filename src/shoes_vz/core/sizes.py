"""Byte sizes as operators type them: `8G`, `8GiB`, `8192M`, `64g`, `1T`, or plain bytes.

Units are binary (K = 1024): VZ wants memory in whole MiB and disk images in 512-byte sectors, and
`8G` of guest memory means 8 GiB to everyone who types it.
"""

from __future__ import annotations

import re

from shoes_vz.core.errors import InvalidInput

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_PATTERN = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    m = _PATTERN.fullmatch(text.strip())
    if not m:
        raise InvalidInput(f"size {text!r}: use a number with K, M, G or T (binary units), e.g. 8G or 8192M")
    value = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if value <= 0:
        raise InvalidInput(f"size {text!r} must be more than zero")
    return value


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]} {unit}iB"
    return f"{n} bytes"


__all__ = ["format_size", "parse_size"]
