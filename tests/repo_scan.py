"""A static scan of every tracked file for paths that leave the repository (the runtime side is the
audit hook in repo_boundary.py).

Found: a `..` that climbs above the repository root, counted from the file's own directory (how
scripts, Makefiles and docs name their neighbours; Python here anchors on `__file__`);
`__file__`-anchored `parents[N]`, `.parent` and `os.path.dirname` chains that climb past the root; a
path through a directory named `shared` (where the reference notes beside the main checkout live);
an absolute path into the directories that hold this checkout; a tracked symlink pointing out.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

_DELIMS = "\\s\"'`()=:,;|&<>\\[\\]{}"
_DOTDOT = re.compile(rf"(?<![^{_DELIMS}/])\.\.(?![^{_DELIMS}/])")  # `..` as a whole path segment
_TOKEN_CHAR = re.compile(rf"[^{_DELIMS}]")
_SHARED = re.compile(r"(?<![\w.-])" + "shared" + r"(?=/)")
_ANCHOR = r"__file__\)?(?:\.resolve\(\)|\.absolute\(\))?"
_PARENTS = re.compile(_ANCHOR + r"\.parents\[(\d+)\]")
_PARENT_CHAIN = re.compile(_ANCHOR + r"((?:\.parent\b)+)")
_DIRNAME_CHAIN = re.compile(r"((?:os\.path\.dirname\()+)(?:os\.path\.(?:abspath|realpath)\()?__file__")


def tracked(root: Path) -> list[tuple[str, str]]:
    """(git mode, path) of every tracked file."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-s", "-z"], capture_output=True, check=True).stdout
    entries = []
    for entry in out.decode().split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            entries.append((meta.split()[0], path))
    return entries


def _token_at(line: str, start: int, end: int) -> tuple[str, str, int]:
    """The path-like word around line[start:end], the character just before it, and where it starts."""
    while start > 0 and _TOKEN_CHAR.match(line[start - 1]):
        start -= 1
    while end < len(line) and _TOKEN_CHAR.match(line[end]):
        end += 1
    return line[start:end], line[start - 1] if start else "", start


def _lowest(segments: Iterable[str]) -> int:
    """How far below its start a relative path climbs (0: never above it); `$x` or `*` restarts it."""
    depth = lowest = 0
    for seg in segments:
        if "$" in seg or "*" in seg:  # $(dirname "$0"), $here, a glob: anchored at the file, we assume
            depth = 0
        elif seg == "..":
            depth -= 1
            lowest = min(lowest, depth)
        elif seg not in ("", "."):
            depth += 1
    return lowest


SCRATCH = ("/tmp", "/var/tmp", "/private/tmp", "/dev/shm")

def climbs_out(token: str, before: str, file_depth: int, root: Path) -> bool:
    if token.startswith(("@executable_path/", "@loader_path/", "@rpath/")):  # dyld: relative to a binary
        return False
    if token.startswith("/") and before not in (")", "}"):  # absolute; `$(…)/..` and `{x}/..` are not
        return not _under(os.path.normpath(token), str(root))
    return file_depth + _lowest(token.split("/")) < 0


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def line_findings(line: str, file_depth: int, root: Path, python: bool, places: Sequence[str]) -> Iterator[str]:
    tokens = dict.fromkeys(_token_at(line, m.start(), m.end()) for m in _DOTDOT.finditer(line))
    for token, before, _ in tokens:
        if climbs_out(token, before, file_depth, root):
            yield f"`{token}` climbs above the repository root"
    if _SHARED.search(line):
        yield "a path through a `shared` directory (beside the checkout, never in it)"
    for place in places:
        if re.search(r"(?<![\w.-])" + re.escape(place.rstrip("/")) + r"(?=/)", line):
            yield f"an absolute path under {place}, which holds this checkout"
    if python:
        climbs = [int(m.group(1)) for m in _PARENTS.finditer(line)]
        climbs += [m.group(1).count(".parent") - 1 for m in _PARENT_CHAIN.finditer(line)]
        climbs += [m.group(1).count("dirname(") - 1 for m in _DIRNAME_CHAIN.finditer(line)]
        if any(c > file_depth for c in climbs):
            yield f"climbs {max(climbs)} directories from __file__, {file_depth} below the root"


def scan(root: Path, files: Iterable[tuple[str, str]], places: Sequence[str]) -> list[str]:
    """`path:line: what` for every finding in `files` ((git mode, path) pairs under `root`)."""
    root = root.resolve()
    # every absolute path is under /; and the system's scratch directories, which a checkout may sit in
    # (a CI clone in /tmp), are where docs and tests rightly name temporary paths — the audit hook
    # still watches what the suite really reads there
    places = [p for p in places if os.path.normpath(p) not in ("/", *SCRATCH)]
    found = []
    for mode, rel in files:
        path, depth = root / rel, len(Path(rel).parent.parts)
        if mode == "120000":
            target = os.readlink(path)
            if not _under(os.path.normpath(os.path.join(path.parent, target)), str(root)):
                found.append(f"{rel}: a symlink to {target}, outside the repository")
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            found += [f"{rel}:{n}: {what}" for what in line_findings(line, depth, root, rel.endswith(".py"), places)]
    return found
