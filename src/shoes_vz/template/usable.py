"""`UsableTemplates`: the templates an agent may serve — frozen ones that passed a full `verify` at
start. Refused ones are neither reported to the server nor used for runners.

The full verification hashes every file once (cached by stat key in the agent's state dir, so a
restart re-reads nothing unchanged); each runner then gets the cheap `Template.check` against the
stat keys recorded here.
"""

from __future__ import annotations

from pathlib import Path

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.store import Template, TemplateStore
from shoes_vz.template.verify import DigestCache, Verification, verify


class UsableTemplates:
    def __init__(self, store: TemplateStore, cache_file: Path | None = None) -> None:
        self.store = store
        self.cache_file = cache_file
        self._usable: dict[str, Template] = {}
        self._refused: dict[str, Verification] = {}

    @property
    def directory(self) -> Path:
        return self.store.directory

    def verify_all(self) -> list[Verification]:
        """Verify every frozen template (blocking: run it off the event loop); returns the refused."""
        cache = DigestCache(self.cache_file) if self.cache_file is not None else None
        usable: dict[str, Template] = {}
        refused: dict[str, Verification] = {}
        for name in self.store.frozen_names():
            result = verify(self.store.directory / name, cache=cache)
            if result.ok and result.meta is not None:
                usable[name] = Template(result.path, result.meta, verified=dict(result.stat_keys))
            else:
                refused[name] = result
        if cache is not None:
            cache.save()
        self._usable, self._refused = usable, refused
        return list(refused.values())

    def list(self) -> list[Template]:
        return [self._usable[n] for n in sorted(self._usable)]

    def get(self, name: str) -> Template:
        if name in self._usable:
            return self._usable[name]
        if name in self._refused:
            v = self._refused[name]
            raise TemplateError(f"template {name!r} was refused at agent start: {'; '.join(v.problems)} "
                                f"(fix: {v.fix}; then restart the agent)")
        raise TemplateError(f"no usable template named {name!r} in {self.store.directory}")

    def for_resource_type(self, resource_type: str) -> Template | None:
        for t in self.list():
            if resource_type in t.meta.resource_types:
                return t
        return None


__all__ = ["UsableTemplates"]
