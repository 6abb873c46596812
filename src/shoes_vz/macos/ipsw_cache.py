"""The IPSW cache: downloads that resume, are checked before use, and are reused by name.

Layout of the cache directory (default `~/.cache/shoes-vz/ipsw`):

    NAME.ipsw           a complete download; reused by any later run that asks for NAME
    NAME.ipsw.part      an interrupted download; the next run resumes it (`Range: bytes=<size>-`)
    NAME.ipsw.json      {"url", "size", "sha256"}, written when the download completed

A download becomes NAME.ipsw only after its size matches what the server announced and it starts
like a zip archive (an IPSW is one), so a captive-portal page or a cut connection never poses as an
IPSW. Nothing but `.part` is ever left behind by a failed or interrupted download. Stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

from shoes_vz.macos.install_errors import RERUN, InstallError
from shoes_vz.vm.digest import sha256_file

CHUNK = 1 << 20
TIMEOUT = 60.0          # seconds without a byte before a download counts as dropped
ZIP_MAGIC = b"PK\x03\x04"

ByteProgress = Callable[[int, int | None], None]  # (bytes so far, total or None)


def cached_name(url: str) -> str:
    """The cache file name for `url`: the last path segment (Apple's names carry version and build)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise InstallError(f"cannot download {url!r}: only http(s) URLs are supported", resumable=False)
    name = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise InstallError(f"cannot name a cache file after {url!r}", resumable=False)
    return name


def check_ipsw(path: Path) -> None:
    """Cheap sanity check before handing a file to Virtualization.framework."""
    try:
        with path.open("rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise InstallError(f"{path} does not exist; pass --ipsw PATH of a downloaded .ipsw, or --ipsw latest",
                           resumable=False) from None
    except IsADirectoryError:
        raise InstallError(f"{path} is a directory, not an .ipsw file", resumable=False) from None
    if head != ZIP_MAGIC:
        raise InstallError(f"{path} is not an IPSW (an IPSW is a zip archive)", resumable=False)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def forget(path: Path) -> None:
    """Drop a cached IPSW (e.g. one the framework found damaged) so the next run downloads it again."""
    for p in (path, _sidecar(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _reusable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        recorded = json.loads(_sidecar(path).read_text())
    except FileNotFoundError:
        return True  # put there by hand: taken by name, the framework checks it when loading
    except (OSError, ValueError):
        recorded = {}
    if isinstance(recorded, dict) and recorded.get("size") == path.stat().st_size:
        return True
    forget(path)  # truncated or replaced since it was downloaded
    return False


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a `Content-Range: bytes A-B/T` (or `bytes */T`) header."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (int(m.group(2)) if m.group(2) != "*" else None)


def _transfer(url: str, part: Path, progress: ByteProgress, timeout: float) -> int | None:
    """Append the rest of `url` to `part`; the total size when the server said it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) checked above
    except urllib.error.HTTPError as e:
        first, total = _content_range(e.headers.get("Content-Range"))
        if e.code == 416 and have and total == have:
            return total  # the previous run got every byte but stopped before the rename
        if e.code == 416:
            part.unlink()
            return _transfer(url, part, progress, timeout)  # the part does not fit this file: start over
        raise
    with response:
        if response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != have:
                part.unlink()
                raise InstallError(f"the server resumed {url} at byte {first}, not {have}; deleted the "
                                   f"partial file, {RERUN}", resumable=True)
            mode = "ab"
        else:  # 200: the server sent the whole file (no Range support, or nothing to resume)
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with part.open(mode) as f:
            progress(have, total)
            while chunk := response.read(CHUNK):
                f.write(chunk)
                have += len(chunk)
                progress(have, total)
            f.flush()
            os.fsync(f.fileno())
    return total


def fetch(url: str, cache_dir: Path, progress: ByteProgress, *, timeout: float = TIMEOUT) -> Path:
    """The cached IPSW for `url`, downloading (or resuming) it first when needed."""
    dest = cache_dir / cached_name(url)
    if _reusable(dest):
        return dest
    part = _part(dest)
    cache_dir.mkdir(parents=True, exist_ok=True)  # an unwritable cache is not a network problem
    try:
        total = _transfer(url, part, progress, timeout)
        size = part.stat().st_size
    except urllib.error.HTTPError as e:
        raise InstallError(f"could not download {url}: HTTP {e.code} {e.reason}",
                           resumable=e.code >= 500 or e.code in (408, 429)) from None
    except (OSError, HTTPException) as e:  # URLError, timeouts, resets and ENOSPC are OSErrors
        kept = part.stat().st_size if part.exists() else 0
        what = "the disk is full; free space, then" if getattr(e, "errno", None) == errno.ENOSPC else \
            "check the network, then"
        raise InstallError(f"the download of {url} stopped at {kept} bytes ({type(e).__name__}: {e}); "
                           f"{part} is kept: {what} {RERUN} to resume", resumable=True) from None
    if total is not None and size != total:
        raise InstallError(f"the download of {url} ended at {size} of {total} bytes; {part} is kept: {RERUN} "
                           "to resume", resumable=True)
    try:
        check_ipsw(part)
    except InstallError:
        part.unlink()
        raise InstallError(f"{url} did not deliver an IPSW (not a zip archive; a proxy or captive portal "
                           f"page?); deleted it, {RERUN}", resumable=True) from None
    _sidecar(dest).write_text(json.dumps({"url": url, "size": size, "sha256": sha256_file(part)}) + "\n")
    os.replace(part, dest)
    return dest


__all__ = ["ByteProgress", "cached_name", "check_ipsw", "fetch", "forget"]
