"""Drafts: `<templates_dir>/.drafts/NAME/`, writable, never served; `freeze` publishes them.

`new_draft` builds into a temp directory next to the final one and renames it into place only when
the body succeeds; any failure (KeyboardInterrupt included) removes it, so `.drafts` never holds a
half-made draft.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.metadata import FILE_NAME, TemplateMetadata
from shoes_vz.template.modes import remove_tree
from shoes_vz.template.store import TemplateStore, check_name
from shoes_vz.vm.bundle import write_json_atomic


@dataclass(frozen=True)
class Draft:
    path: Path
    meta: TemplateMetadata

    @classmethod
    def open(cls, store: TemplateStore, name: str) -> Draft:
        path = store.draft_path(name)
        if not path.is_dir():
            raise TemplateError(
                f"no draft of {name!r} in {store.drafts_dir}: make one with `shoes-vz template import-tart`, "
                f"`template create` or `template edit {name}`")
        return cls(path, TemplateMetadata.read(path))


def write_metadata(directory: Path, meta: TemplateMetadata) -> None:
    write_json_atomic(directory / FILE_NAME, meta.model_dump(mode="json"))


@contextmanager
def new_draft(store: TemplateStore, name: str) -> Iterator[Path]:
    """Yield an empty temp directory; on success it becomes `.drafts/NAME` (it must then hold
    TemplateMetadata.json). Refuses when that draft already exists."""
    check_name(name)
    final = store.draft_path(name)
    if os.path.lexists(final):
        raise TemplateError(f"a draft of {name!r} already exists at {final}: freeze it "
                            f"(`shoes-vz template freeze {name}`) or remove it (`rm -rf {final}`)")
    store.drafts_dir.mkdir(parents=True, exist_ok=True)
    tmp = store.drafts_dir / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / FILE_NAME).is_file():
            raise TemplateError(f"draft {name!r} was built without {FILE_NAME}")
        if os.path.lexists(final):
            raise TemplateError(f"a draft of {name!r} appeared at {final} while this one was built")
        os.rename(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise


__all__ = ["Draft", "new_draft", "write_metadata"]
