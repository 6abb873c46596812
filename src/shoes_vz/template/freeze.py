"""`freeze`: a draft becomes the served template — host key pinned, digests recorded, read-only.

Publishing is crash-safe: the older version (if any) is first moved aside into `.retired/`, then the
draft is renamed to `<templates_dir>/NAME`. At every instant either the template or the (frozen)
draft exists; a crash in between leaves the draft, and running `freeze` again finishes the job.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.draft import Draft, write_metadata
from shoes_vz.template.metadata import FILE_NAME, TemplateMetadata
from shoes_vz.template.modes import make_read_only, make_writable, move_dir, remove_tree
from shoes_vz.template.store import Template, TemplateStore
from shoes_vz.template.use_lock import exclusive, in_use
from shoes_vz.vm import digest
from shoes_vz.vm.bundle import Bundle

HostKeyProbe = Callable[[Path], str]
"""Boots the draft at the given path and returns its SSH host public key (OpenSSH one-line form)."""

SIM_HOST_KEY = Path("sim") / "ssh_host_ed25519_key"


def freeze(
    store: TemplateStore,
    name: str,
    *,
    runners_dir: Path | None,
    host_key: str | None = None,
    host_key_probe: HostKeyProbe | None = None,
    progress: digest.Progress | None = None,
) -> Template:
    """Freeze the draft `name` and publish it, replacing an older version unless VMs use that one.

    The host key is, in order: `host_key` (a one-line OpenSSH public key or a file holding one), what
    `host_key_probe` reads from a boot, a sim draft's `sim/ssh_host_ed25519_key`, or the key the draft
    already carries (`template edit` keeps it). `runners_dir` is where to look for live VMs (to name
    them); None is allowed only when there is no older version to replace. Whatever it names, a
    version that any live VM holds (template/use_lock.py) is never replaced.
    """
    draft = Draft.open(store, name)
    make_writable(draft.path)  # a re-run after a crash finds it read-only
    meta = draft.meta
    key = _host_key(draft, host_key, host_key_probe)
    final = store.path(name)
    if os.path.lexists(final):
        _check_replaceable(final, meta, runners_dir)
    digests = _digests(draft.path, progress)
    meta = meta.model_copy(update={
        "ssh_host_key": key, "digests": digests, "frozen_at": time.time(),
        "disk_bytes": (draft.path / "Disk.img").stat().st_size if (draft.path / "Disk.img").is_file()
        else meta.disk_bytes,
    })
    write_metadata(draft.path, meta)
    make_read_only(draft.path)
    _publish(store, draft.path, final, meta, runners_dir)
    return Template(final, meta)


def live_users(runners_dir: Path, template_dir: Path) -> list[str]:
    """Runner bundles in `runners_dir` whose VM is running from `template_dir`."""
    target = os.path.realpath(template_dir)
    users = []
    for b, meta in Bundle.live_in(runners_dir):
        if meta is None:
            users.append(f"{b.runner_id} (metadata unreadable: may use it)")
        elif meta.get("template_dir") is not None and os.path.realpath(str(meta["template_dir"])) == target:
            users.append(b.runner_id)
    return users


def normalize_host_key(text: str, source: str = "the host key") -> str:
    """`algo base64` of a one-line OpenSSH public key; TemplateError when it is not one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise TemplateError(f"{source}: expected one OpenSSH public key line, found {len(lines)} lines")
    try:
        asyncssh.import_public_key(lines[0])
    except (asyncssh.KeyImportError, ValueError) as e:
        raise TemplateError(f"{source} is not an OpenSSH public key ({e}); expected e.g. "
                            "'ssh-ed25519 AAAA…' as in the guest's /etc/ssh/ssh_host_ed25519_key.pub") from None
    return " ".join(lines[0].split()[:2])


def _host_key(draft: Draft, given: str | None, probe: HostKeyProbe | None) -> str:
    if given:
        given = given.strip()
        if " " in given and not Path(given).is_file():  # a key line always has a space
            return normalize_host_key(given)
        try:
            return normalize_host_key(Path(given).read_text(), given)
        except OSError as e:
            raise TemplateError(f"cannot read the host key file {given}: {e.strerror}") from None
    if probe is not None:
        return normalize_host_key(probe(draft.path), "the host key read from a boot")
    sim_key = draft.path / SIM_HOST_KEY
    if sim_key.with_suffix(".pub").is_file():
        return normalize_host_key(sim_key.with_suffix(".pub").read_text(), str(sim_key.with_suffix(".pub")))
    if sim_key.is_file():
        try:
            private = asyncssh.read_private_key(str(sim_key))
        except (asyncssh.KeyImportError, OSError) as e:
            raise TemplateError(f"{sim_key}: unreadable sim host key: {e}") from None
        return normalize_host_key(private.export_public_key().decode(), str(sim_key))
    if draft.meta.ssh_host_key:
        return normalize_host_key(draft.meta.ssh_host_key, f"{draft.path / FILE_NAME} ssh_host_key")
    raise TemplateError(
        f"no SSH host key to pin for {draft.meta.name!r}: pass --host-key with the guest's "
        "/etc/ssh/ssh_host_ed25519_key.pub (the line or the file)")


def _check_replaceable(final: Path, meta: TemplateMetadata, runners_dir: Path | None) -> None:
    try:
        current = TemplateMetadata.read(final)
    except TemplateError:
        current = None  # a broken older version may always be replaced
    if current is not None and meta.parent_version and meta.parent_version != current.version:
        raise TemplateError(
            f"the draft of {meta.name!r} was made from version {meta.parent_version} but the template is "
            f"now version {current.version}: make a new draft (`shoes-vz template edit {meta.name}`)")
    if runners_dir is None:
        raise TemplateError(f"{final} exists: give the runners directory so freeze can check that no VM uses it")
    users = live_users(runners_dir, final)
    if users:
        raise TemplateError(
            f"template {meta.name!r} is in use by {len(users)} live VM(s) in {runners_dir}: {', '.join(users)}; "
            "freeze again when they are gone (the draft is kept)")
    if in_use(final):  # a VM made from it lives elsewhere: another runners directory, a warm slot being built
        raise TemplateError(
            f"template {meta.name!r} is in use by a live VM that is not in {runners_dir} (another runners "
            "directory, or a warm slot or scratch VM being built); freeze again when it is gone (the draft is kept)")


def _digests(root: Path, progress: digest.Progress | None) -> dict[str, str]:
    """Every regular file except the metadata itself, by path relative to the template."""
    files: list[tuple[str, Path]] = []
    for dirpath, subdirs, names in os.walk(root):
        for n in sorted([*subdirs, *names]):
            p = Path(dirpath) / n
            if p.is_symlink():
                raise TemplateError(f"{p} is a symlink; a template holds only regular files")
            if n in names and p != root / FILE_NAME:
                if not p.is_file():
                    raise TemplateError(f"{p} is not a regular file")
                files.append((str(p.relative_to(root)), p))
    files.sort()
    total = sum(p.stat().st_size for _, p in files)
    done = 0
    out = {}
    for rel, p in files:
        sub = None if progress is None else (lambda d, _t, base=done: progress(base + d, total))
        out[rel] = digest.file_digest(p, sub)
        done += p.stat().st_size
    if progress is not None:
        progress(total, total)
    return out


def _publish(store: TemplateStore, draft_dir: Path, final: Path, meta: TemplateMetadata,
             runners_dir: Path | None) -> None:
    if not os.path.lexists(final):
        move_dir(draft_dir, final)
        _remove_retired(store, meta.name)  # what a crash after the move aside left
        return
    _check_replaceable(final, meta, runners_dir)  # again: a VM may have started while we hashed
    store.retired_dir.mkdir(exist_ok=True)
    retired = store.retired_dir / f"{meta.name}.{secrets.token_hex(4)}"
    with exclusive(final):  # no VM can start from the old version between the check and the move
        move_dir(final, retired)  # from here to the next rename only the draft exists
        move_dir(draft_dir, final)
    _remove_retired(store, meta.name)


def _remove_retired(store: TemplateStore, name: str) -> None:
    if not store.retired_dir.is_dir():
        return
    for p in store.retired_dir.iterdir():
        if p.name.rpartition(".")[0] == name:
            remove_tree(p)


__all__ = ["HostKeyProbe", "freeze", "live_users", "normalize_host_key"]
