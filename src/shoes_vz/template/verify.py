"""Is a frozen template still what `freeze` made? Modes, symlinks, digests, pinned host key.

`verify(path)` lists every problem (empty: fine). With a `DigestCache` a file whose
(inode, size, mtime, ctime) is unchanged since it was last digested is not hashed again, so an agent
restart does not re-read 64 GiB. With `known` stat keys (from an earlier full verification) the
check is cheap enough for every runner: modes, metadata, small files re-hashed, big files compared
by stat only.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from shoes_vz.core.errors import TemplateError
from shoes_vz.template import modes
from shoes_vz.template.metadata import FILE_NAME, TemplateMetadata
from shoes_vz.template.store import StatKey
from shoes_vz.vm import digest
from shoes_vz.vm.bundle import write_json_atomic

REQUIRED = ("Disk.img", "AuxiliaryStorage", "HardwareModel.json")
SMALL = 1 << 20  # files up to this size are re-hashed by the cheap per-runner check


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Verification:
    path: Path
    meta: TemplateMetadata | None = None
    problems: list[str] = field(default_factory=list)
    stat_keys: dict[str, StatKey] = field(default_factory=dict)
    """Stat keys of the digested files as they were when they matched."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def fix(self) -> str:
        name = self.path.name
        return (f"if only modes are wrong and the digests match, `chmod -R a-w {self.path}` (and `chmod 0400` "
                "its Disk.img and private keys); otherwise rebuild it: "
                f"`shoes-vz template edit {name}`, fix the draft, `shoes-vz template freeze {name}`")


class DigestCache:
    """Digests by (path, algorithm), valid while the file's stat key is unchanged (a JSON file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, object]] = {}
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads(path.read_text())
            entries = data.get("entries", {}) if isinstance(data, dict) else {}
            self._entries = {k: v for k, v in entries.items() if isinstance(v, dict)}

    def get(self, file: Path, key: StatKey, algo: str) -> str | None:
        e = self._entries.get(str(file))
        if e is None or e.get("key") != list(key):
            return None
        value = (e.get("digests") or {}).get(algo)  # type: ignore[attr-defined]
        return value if isinstance(value, str) else None

    def put(self, file: Path, key: StatKey, algo: str, value: str) -> None:
        e = self._entries.get(str(file))
        if e is None or e.get("key") != list(key):
            e = self._entries[str(file)] = {"key": list(key), "digests": {}}
        e["digests"][algo] = value  # type: ignore[index]

    def save(self) -> None:
        """Write the cache, forgetting files that no longer exist."""
        self._entries = {k: v for k, v in self._entries.items() if os.path.lexists(k)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"version": 1, "entries": self._entries}, 0o600)


def verify(
    path: Path,
    *,
    known: Mapping[str, StatKey] | None = None,
    cache: DigestCache | None = None,
    progress: digest.Progress | None = None,
) -> Verification:
    """Every problem of the frozen template at `path` (see the module docstring)."""
    result = Verification(path)
    if not path.is_dir() or path.is_symlink():
        result.problems.append(f"{path} is not a directory")
        return result
    files = _check_tree(path, result.problems)
    try:
        meta = result.meta = TemplateMetadata.read(path)
    except TemplateError as e:
        result.problems.append(str(e))
        return result
    if meta.name != path.name:
        result.problems.append(f"metadata names it {meta.name!r} but its directory is {path.name!r}")
    _check_host_key(meta, result.problems)
    for name in REQUIRED:
        if name not in files:
            result.problems.append(f"{name} is missing")
        elif name not in meta.digests:
            result.problems.append(f"{name} has no recorded digest (freeze records it)")
    for rel in sorted(set(files) - set(meta.digests) - {FILE_NAME, *REQUIRED}):
        result.problems.append(f"{rel} is not recorded in the digests (added after freeze?)")
    todo = {rel: rec for rel, rec in meta.digests.items() if rel in files}
    for rel in sorted(set(meta.digests) - set(files) - set(REQUIRED)):
        result.problems.append(f"{rel} is recorded in the digests but missing")
    total = sum(files[rel].st_size for rel in todo)
    done = 0
    for rel, recorded in sorted(todo.items()):
        st = files[rel]
        sub = None if progress is None else (lambda d, _t, base=done: progress(base + d, total))
        problem = _check_digest(path / rel, rel, recorded, st, known, cache, sub)
        if problem:
            result.problems.append(problem)
        else:
            result.stat_keys[rel] = stat_key(st)
        done += st.st_size
        if progress is not None:
            progress(done, total)
    return result


def _check_tree(root: Path, problems: list[str]) -> dict[str, os.stat_result]:
    """Modes, file types, symlinks, flags of every entry; returns the regular files by relative path."""
    files: dict[str, os.stat_result] = {}
    entries = [root, *(Path(d) / n for d, subdirs, names in os.walk(root) for n in [*subdirs, *names])]
    for p in entries:
        rel = "." if p == root else str(p.relative_to(root))
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{rel} is a symlink")
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            problems.append(f"{rel} is not a regular file or directory")
            continue
        if st.st_mode & modes.WRITE_BITS:
            problems.append(f"{rel} is writable (mode {stat.S_IMODE(st.st_mode):04o}); frozen templates "
                            "are read-only")
        elif stat.S_ISREG(st.st_mode) and modes.is_private(rel) and st.st_mode & 0o007:
            problems.append(f"{rel} is readable by every user (mode {stat.S_IMODE(st.st_mode):04o}): it holds "
                            "secrets (a guest's host key, its disk or memory); frozen templates keep it 0400")
        elif modes.has_flags() and not getattr(st, "st_flags", 0) & modes.IMMUTABLE:
            problems.append(f"{rel} is not immutable (chflags uchg)")
        if stat.S_ISREG(st.st_mode):
            files[rel] = st
    return files


def _check_host_key(meta: TemplateMetadata, problems: list[str]) -> None:
    if not meta.pinned:
        problems.append("no pinned SSH host key (unpinned: `shoes-vz template freeze` pins it)")
        return
    try:
        asyncssh.import_public_key(meta.ssh_host_key)
    except (asyncssh.KeyImportError, ValueError) as e:
        problems.append(f"the pinned SSH host key is not an OpenSSH public key ({e})")


def _check_digest(
    file: Path, rel: str, recorded: str, st: os.stat_result, known: Mapping[str, StatKey] | None,
    cache: DigestCache | None, progress: digest.Progress | None,
) -> str:
    try:
        algo = digest.algorithm_of(recorded)
    except TemplateError as e:
        return f"{rel}: {e}"
    key = stat_key(st)
    if known is not None and st.st_size > SMALL:
        if known.get(rel) == key:
            return ""
        return (f"{rel} changed since the agent verified it (restart the agent to verify the new "
                "version)")
    actual = cache.get(file, key, algo) if cache is not None else None
    if actual is None:
        try:
            actual = digest.digest_with(algo, file, progress)
        except OSError as e:
            return f"{rel}: cannot read: {e}"
        if cache is not None and stat_key(os.lstat(file)) == key:
            cache.put(file, key, algo, actual)
    return "" if actual == recorded else f"{rel} does not match its recorded digest"


__all__ = ["DigestCache", "Verification", "stat_key", "verify"]
