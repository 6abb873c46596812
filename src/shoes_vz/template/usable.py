"""`UsableTemplates`: the templates an agent may serve — frozen ones that passed a full `verify` at
start. Refused ones are neither reported to the server nor used for runners.

The full verification hashes every file once (cached by stat key in the agent's state dir, so a
restart re-reads nothing unchanged); each runner then gets the cheap `Template.check` against the
stat keys recorded here.
"""

from __future__ import annotations

import threading
from pathlib import Path

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.metadata import FILE_NAME
from shoes_vz.template.store import Template, TemplateStore
from shoes_vz.template.verify import DigestCache, Verification, verify


class UsableTemplates:
    def __init__(self, store: TemplateStore, cache_file: Path | None = None) -> None:
        self.store = store
        self.cache_file = cache_file
        self._usable: dict[str, Template] = {}
        self._refused: dict[str, Verification] = {}
        self._seen: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        return self.store.directory

    def verify_all(self) -> list[Verification]:
        """Verify every frozen template (blocking: run it off the event loop); returns the refused."""
        with self._lock:
            self._seen = {}
            return self._verify_changed()

    def refresh(self) -> list[Verification]:
        """Verify templates published, replaced or removed since the last look — a `template freeze`
        while the agent runs is served without a restart. Blocking; returns the newly refused."""
        with self._lock:
            return self._verify_changed()

    def _verify_changed(self) -> list[Verification]:
        seen = {name: _publish_key(self.store.directory / name) for name in self.store.frozen_names()}
        changed = [n for n, key in seen.items() if self._seen.get(n) != key]
        if not changed and seen.keys() == self._seen.keys():
            return []
        cache = DigestCache(self.cache_file) if self.cache_file is not None else None
        usable = {n: t for n, t in self._usable.items() if n in seen and n not in changed}
        refused = {n: v for n, v in self._refused.items() if n in seen and n not in changed}
        for name in changed:
            result = verify(self.store.directory / name, cache=cache)
            if result.ok and result.meta is not None:
                usable[name] = Template(result.path, result.meta, verified=dict(result.stat_keys))
            else:
                refused[name] = result
        if cache is not None:
            cache.save()
        self._usable, self._refused, self._seen = usable, refused, seen  # readers see whole dicts
        return [refused[n] for n in changed if n in refused]

    def list(self) -> list[Template]:
        return [self._usable[n] for n in sorted(self._usable)]

    def get(self, name: str) -> Template:
        if name in self._usable:
            return self._usable[name]
        if name in self._refused:
            v = self._refused[name]
            raise TemplateError(f"template {name!r} was refused by the agent: {'; '.join(v.problems)} "
                                f"(fix: {v.fix}; the agent picks up a re-frozen template by itself)")
        raise TemplateError(f"no usable template named {name!r} in {self.store.directory}")

    def for_resource_type(self, resource_type: str) -> Template | None:
        for t in self.list():
            if resource_type in t.meta.resource_types:
                return t
        return None


def _publish_key(path: Path) -> tuple[int, ...]:
    """Changes when a template is published anew (freeze renames a new directory into place) or
    its metadata is touched."""
    try:
        d, m = path.stat(), (path / FILE_NAME).stat()
    except OSError:
        return ()
    return d.st_ino, d.st_ctime_ns, m.st_ino, m.st_mtime_ns, m.st_ctime_ns


__all__ = ["UsableTemplates"]
