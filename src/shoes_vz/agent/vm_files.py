"""A runner's VM files: clones of its template — or of its warm slot — and an identity (DESIGN §5, §12)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from shoes_vz.agent.warm import WarmSlot
from shoes_vz.core.errors import ShoesVzError
from shoes_vz.template import Template
from shoes_vz.vm import clone
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.identity import write_machine_identifier

log = logging.getLogger(__name__)


def fill_from_slot(dst: Bundle, template: Template, slot: WarmSlot, *, allow_copy: bool) -> bool:
    """Clone a warm slot into `dst`; False (and `dst` emptied) when the slot cannot be used — a
    runner then boots cold instead of failing (DESIGN §12)."""
    try:
        fill_bundle(dst, template, slot, allow_copy=allow_copy)
        return True
    except (OSError, ShoesVzError) as e:
        log.warning("warm slot %s unusable (%s): booting cold", slot.path, e)
        for p in dst.path.iterdir():
            p.unlink()
        return False


def fill_bundle(dst: Bundle, template: Template, slot: WarmSlot | None, *, allow_copy: bool) -> None:
    """A VM's files in `dst`: clones of the template's disk and aux storage and a fresh identity,
    or — from a warm slot — clones of the slot's disk, aux storage and saved state with its identity."""
    src = slot.bundle if slot is not None else None
    with slot.in_use() if slot is not None else contextlib.nullcontext():
        pairs = [(template.disk, dst.disk), (template.aux_storage, dst.aux_storage)]
        if src is not None:
            pairs = [(src.disk, dst.disk), (src.aux_storage, dst.aux_storage), (src.saved_state, dst.saved_state)]
        for source, target in pairs:
            clone.clone_file(source, target, allow_copy=allow_copy)
            os.chmod(target, 0o600)  # the VM's copy is writable, the template's (and slot's) is not
        shutil.copyfile(template.hardware_model, dst.hardware_model)
        if src is not None:
            shutil.copyfile(src.machine_identifier, dst.machine_identifier)
        else:
            write_machine_identifier(dst.machine_identifier)


__all__ = ["fill_bundle", "fill_from_slot"]
