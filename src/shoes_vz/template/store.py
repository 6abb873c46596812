"""The templates directory: where frozen templates and drafts live, and finding them.

    <templates_dir>/NAME/            frozen, served to runners (read-only)
    <templates_dir>/.drafts/NAME/    writable draft (import-tart, create, edit); never served
    <templates_dir>/.<anything>      never a template
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoes_vz.core.errors import TemplateError
from shoes_vz.core.resources import RESOURCE_TYPES
from shoes_vz.template.metadata import FILE_NAME, TemplateMetadata
from shoes_vz.vm.bundle import VMFiles

log = logging.getLogger(__name__)

NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
DRAFTS = ".drafts"
RETIRED = ".retired"

StatKey = tuple[int, int, int, int]
"""(st_ino, st_size, st_mtime_ns, st_ctime_ns): a file unchanged since it was last digested."""


def check_name(name: str) -> str:
    if not name or not set(name) <= NAME_OK or name.startswith(".") or len(name) > 128:
        raise TemplateError(f"template name {name!r} is invalid: use letters, digits, '.', '_', '-' "
                            "(not starting with '.')")
    return name


def check_resource_types(types: list[str]) -> list[str]:
    bad = [t for t in types if t not in RESOURCE_TYPES]
    if bad:
        raise TemplateError(f"unknown resource types {bad}; expected some of {', '.join(RESOURCE_TYPES)}")
    return types


@dataclass(frozen=True)
class Template(VMFiles):
    path: Path
    meta: TemplateMetadata
    verified: Mapping[str, StatKey] | None = field(default=None, compare=False)
    """Stat keys of the large files as the agent verified them at start (None: not verified)."""

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def sim_dir(self) -> Path:
        return self.path / "sim"

    def check(self) -> None:
        """Refuse a writable, tampered or unpinned template (DESIGN §9). Cheap when the template was
        verified at agent start: modes, small files and the big files' stat against the verified one;
        otherwise a full verification."""
        from shoes_vz.template.verify import verify

        result = verify(self.path, known=self.verified)
        if result.problems:
            raise TemplateError(f"template {self.name}: {'; '.join(result.problems)} (fix: {result.fix})")


@dataclass(frozen=True)
class Entry:
    """What `template list` shows: a template or draft directory, its metadata or why it has none."""

    path: Path
    status: str  # "frozen" or "draft"
    meta: TemplateMetadata | None
    error: str = ""


class TemplateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def drafts_dir(self) -> Path:
        return self.directory / DRAFTS

    @property
    def retired_dir(self) -> Path:
        return self.directory / RETIRED

    def path(self, name: str) -> Path:
        return self.directory / check_name(name)

    def draft_path(self, name: str) -> Path:
        return self.drafts_dir / check_name(name)

    def frozen_names(self) -> list[str]:
        """Directories that may be frozen templates (names starting with '.' never are)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir()
                      if not p.name.startswith(".") and p.is_dir() and not p.is_symlink())

    def entries(self) -> list[Entry]:
        """Frozen templates and drafts, malformed ones included (with the reason)."""
        out = []
        for status, parent in (("frozen", self.directory), ("draft", self.drafts_dir)):
            if not parent.is_dir():
                continue
            for p in sorted(parent.iterdir()):
                if p.name.startswith(".") or not p.is_dir() or p.is_symlink():
                    continue
                try:
                    out.append(Entry(p, status, TemplateMetadata.read(p)))
                except TemplateError as e:
                    out.append(Entry(p, status, None, str(e)))
        return out

    def list(self) -> list[Template]:
        """Frozen templates with readable metadata (unreadable ones are logged and skipped)."""
        found = []
        for name in self.frozen_names():
            try:
                found.append(Template(self.directory / name, TemplateMetadata.read(self.directory / name)))
            except TemplateError as e:
                log.warning("skipping %s: %s", self.directory / name, e)
        return found

    def get(self, name: str) -> Template:
        path = self.path(name)
        if not (path / FILE_NAME).is_file():
            raise TemplateError(f"no template named {name!r} in {self.directory}")
        return Template(path, TemplateMetadata.read(path))

    def for_resource_type(self, resource_type: str) -> Template | None:
        for t in self.list():
            if resource_type in t.meta.resource_types:
                return t
        return None
