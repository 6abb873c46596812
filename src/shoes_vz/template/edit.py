"""`edit`: un-freeze a template into a new writable draft (version + 1); the frozen one is untouched
and keeps serving until the draft is frozen in its place."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.draft import Draft, new_draft, write_metadata
from shoes_vz.template.metadata import FILE_NAME
from shoes_vz.template.store import TemplateStore
from shoes_vz.vm.clone import CloneCopyWarning, CopyProgress, clone_file

CLONED = ("Disk.img", "AuxiliaryStorage")  # big: copy-on-write; the rest is small and copied


def edit(store: TemplateStore, name: str, *, copy: bool = False, progress: CopyProgress | None = None) -> Draft:
    """Make `.drafts/NAME` from the frozen template NAME, writable, version + 1. Refuses when a draft
    exists. `copy` allows a full copy where the volume cannot clone (dev only)."""
    template = store.get(name)
    meta = template.meta
    if not meta.version.isdigit():
        raise TemplateError(f"template {name!r} has version {meta.version!r}; edit needs a number to count up")
    with new_draft(store, name) as tmp:
        for dirpath, subdirs, names in os.walk(template.path):
            here = Path(dirpath)
            rel = here.relative_to(template.path)
            for d in subdirs:
                (tmp / rel / d).mkdir()
            for n in names:
                src, dst = here / n, tmp / rel / n
                if src.is_symlink():
                    raise TemplateError(f"{src} is a symlink; verify the template first")
                if n == FILE_NAME and rel == Path("."):
                    continue
                if rel == Path(".") and n in CLONED:
                    with warnings.catch_warnings():  # the copy is what the caller asked for; it is logged once
                        warnings.simplefilter("ignore", CloneCopyWarning)
                        clone_file(src, dst, allow_copy=copy, progress=progress)
                else:
                    shutil.copyfile(src, dst)
                os.chmod(dst, 0o600 if n.startswith("id_") or n.endswith("_key") else 0o644)
        write_metadata(tmp, meta.model_copy(update={
            "version": str(int(meta.version) + 1), "parent_version": meta.version, "frozen_at": None,
            "digests": {}, "source": meta.source or f"edit:{name}@{meta.version}",
        }))
    return Draft.open(store, name)


__all__ = ["edit"]
