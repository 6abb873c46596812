"""The template file lifecycle: digests, drafts, freeze (pinning, publishing), verify, edit."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from shoes_vz.core.errors import TemplateError
from shoes_vz.template import (
    Draft,
    TemplateMetadata,
    TemplateStore,
    edit,
    file_digest,
    freeze,
    init_sim,
    live_users,
    new_draft,
    verify,
)
from shoes_vz.template.draft import write_metadata
from shoes_vz.template.modes import is_private, make_writable
from shoes_vz.vm import digest as digest_mod
from shoes_vz.vm.bundle import Bundle

GIB = 1024**3
freeze_mod = importlib.import_module("shoes_vz.template.freeze")  # the package exports the function
CHUNK = digest_mod.CHUNK


# -- digests ------------------------------------------------------------------------------------------


def _sparse(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path


def test_digest_of_a_64_gib_sparse_disk_ignores_layout(tmp_path: Path) -> None:
    data = {0: b"boot" * 1024, 32 * GIB + 123: os.urandom(CHUNK + 7), 64 * GIB - 5: b"tail!"}
    a = _sparse(tmp_path / "a.img", 64 * GIB, data)
    # the same bytes with 16 MiB of *allocated* zeros in the middle (a clone that lost its holes)
    b = _sparse(tmp_path / "b.img", 64 * GIB, {**data, 5 * GIB: bytes(4 * CHUNK)})
    assert b.stat().st_blocks > a.stat().st_blocks
    da = file_digest(a)
    assert da.startswith("sha256c4m:") and len(da) == len("sha256c4m:") + 64
    assert file_digest(b) == da
    _sparse(b, 64 * GIB, {40 * GIB: b"\x01"})  # one byte in a hole changes it
    assert file_digest(b) != da


def test_digest_equals_for_a_fully_allocated_copy_and_without_seek_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 9 * CHUNK + 1234  # a partial last chunk
    writes = {CHUNK * 3 + 17: os.urandom(1000), size - 10: b"0123456789"}
    sparse = _sparse(tmp_path / "sparse", size, writes)
    full = tmp_path / "full"
    full.write_bytes(sparse.read_bytes())  # every block allocated
    assert file_digest(full) == file_digest(sparse)
    monkeypatch.delattr(os, "SEEK_DATA")  # a filesystem that cannot tell holes: read everything
    assert file_digest(sparse) == file_digest(full)


def test_digest_reports_progress_up_to_the_size(tmp_path: Path) -> None:
    f = _sparse(tmp_path / "d", 3 * CHUNK + 5, {CHUNK: b"x"})
    seen: list[tuple[int, int]] = []
    file_digest(f, lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3 * CHUNK + 5, 3 * CHUNK + 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_legacy_bare_sha256_digests_stay_readable(tmp_path: Path) -> None:
    f = tmp_path / "HardwareModel.json"
    f.write_text('{"dataRepresentation": "abc"}')
    legacy = hashlib.sha256(f.read_bytes()).hexdigest()
    assert digest_mod.matches(f, legacy)
    assert digest_mod.matches(f, file_digest(f))
    assert not digest_mod.matches(f, hashlib.sha256(b"other").hexdigest())
    for bad in ("md5:abc", "sha256c4m:xyz", "nothex"):
        with pytest.raises(TemplateError):
            digest_mod.matches(f, bad)


# -- drafts -------------------------------------------------------------------------------------------


def _write_draft_files(d: Path, name: str, **meta: object) -> None:
    _sparse(d / "Disk.img", GIB, {0: b"disk"})
    (d / "AuxiliaryStorage").write_bytes(os.urandom(4096))
    (d / "HardwareModel.json").write_text(json.dumps({"dataRepresentation": "aGVsbG8="}))
    write_metadata(d, TemplateMetadata(name=name, source="test", **meta))  # type: ignore[arg-type]


def _draft(store: TemplateStore, name: str, **meta: object) -> Path:
    with new_draft(store, name) as d:
        _write_draft_files(d, name, **meta)
    return store.draft_path(name)


def _leftovers(store: TemplateStore) -> list[str]:
    return sorted(p.name for p in store.drafts_dir.iterdir()) if store.drafts_dir.exists() else []


def _host_pub() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(tmp_path / "templates")


def test_new_draft_publishes_only_on_success(store: TemplateStore) -> None:
    path = _draft(store, "mac")
    assert Draft.open(store, "mac").meta.name == "mac" and path.is_dir()
    with pytest.raises(TemplateError, match="already exists"):
        _draft(store, "mac")
    for failure in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(failure)), new_draft(store, "other") as d:
            _write_draft_files(d, "other")
            os.chmod(d, 0o555)  # even a read-only half-made draft is removed
            raise failure
    with pytest.raises(TemplateError, match="without TemplateMetadata.json"), new_draft(store, "nometa") as d:
        (d / "Disk.img").write_bytes(b"x")
    assert _leftovers(store) == ["mac"]


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a b", "a/b", "x" * 200])
def test_draft_names_are_validated(store: TemplateStore, name: str) -> None:
    with pytest.raises(TemplateError, match="invalid"), new_draft(store, name):
        pass
    assert not store.directory.exists()


# -- freeze -------------------------------------------------------------------------------------------


def _assert_frozen(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = 0o555 if p.is_dir() else 0o400 if is_private(p.name) else 0o444  # secrets: the agent's user's alone
        assert mode == want, (p, oct(mode))


def test_freeze_pins_digests_and_publishes(store: TemplateStore) -> None:
    _draft(store, "mac")
    key = _host_pub()
    seen: list[tuple[int, int]] = []
    t = freeze(store, "mac", runners_dir=None, host_key=key + " comment@host\n",
               progress=lambda d, total: seen.append((d, total)))
    assert t.path == store.path("mac") and not store.draft_path("mac").exists()
    assert t.meta.ssh_host_key == " ".join(key.split()[:2])
    assert set(t.meta.digests) == {"Disk.img", "AuxiliaryStorage", "HardwareModel.json"}
    assert all(d.startswith("sha256c4m:") for d in t.meta.digests.values())
    assert t.meta.frozen_at and t.meta.disk_bytes == GIB
    assert seen[-1][0] == seen[-1][1] == GIB + 4096 + t.hardware_model.stat().st_size
    assert TemplateMetadata.read(t.path) == t.meta
    _assert_frozen(t.path)
    assert verify(t.path).problems == []
    t.check()


def test_freeze_host_key_sources_and_bad_keys(store: TemplateStore, tmp_path: Path) -> None:
    _draft(store, "a")
    with pytest.raises(TemplateError, match="no SSH host key to pin"):
        freeze(store, "a", runners_dir=None)
    for bad, match in (("ssh-ed25519 AAAAnotakey", "not an OpenSSH public key"),
                       ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "expected one OpenSSH public key line"),
                       (str(tmp_path / "missing.pub"), "cannot read the host key file")):
        with pytest.raises(TemplateError, match=match):
            freeze(store, "a", runners_dir=None, host_key=bad)
    assert store.draft_path("a").is_dir() and not store.path("a").exists()  # the draft is kept
    pub = tmp_path / "host.pub"
    pub.write_text(_host_pub() + "\n")
    assert freeze(store, "a", runners_dir=None, host_key=str(pub)).meta.ssh_host_key == pub.read_text().strip()
    # a probe ("from a boot") gets the draft's path
    _draft(store, "b")
    probed: list[Path] = []
    key = _host_pub()
    t = freeze(store, "b", runners_dir=None, host_key_probe=lambda p: probed.append(p) or key)
    assert probed == [store.draft_path("b")] and t.meta.ssh_host_key == key


def test_init_sim_goes_through_draft_and_freeze(tmp_path: Path) -> None:
    t = init_sim(tmp_path, "sim")
    priv = asyncssh.read_private_key(str(t.sim_dir / "ssh_host_ed25519_key"))
    assert t.meta.ssh_host_key == priv.export_public_key().decode().strip()
    assert {"sim/ssh_host_ed25519_key", "README.md", "Disk.img"} <= set(t.meta.digests)
    assert not any(k.startswith(("sim/id_", "sim/authorized")) for k in t.meta.digests)  # no key into any guest
    assert t.meta.frozen_at and t.meta.source == "sim"
    assert verify(t.path).ok


def _hold_lock(bundle: Bundle) -> subprocess.Popen[str]:
    """A separate process holds the bundle's vm lock (fcntl locks are per process), as `vm run` does."""
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(bundle.lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def lock_holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_freeze_replaces_an_older_version_but_not_while_vms_use_it(
    store: TemplateStore, tmp_path: Path, lock_holders: list[subprocess.Popen[str]]
) -> None:
    key = _host_pub()
    _draft(store, "mac")
    v1 = freeze(store, "mac", runners_dir=None, host_key=key)
    runners = tmp_path / "runners"
    live, dead, other = (Bundle.for_runner(runners, r) for r in ("r-live", "r-dead", "r-other"))
    for b, template_dir in ((live, v1.path), (dead, v1.path), (other, tmp_path / "elsewhere")):
        b.path.mkdir(parents=True)
        b.update_metadata(template="mac", template_dir=str(template_dir))
    lock_holders.append(_hold_lock(live))
    lock_holders.append(_hold_lock(other))
    assert live_users(runners, v1.path) == ["r-live"]
    garbled = Bundle.for_runner(runners, "r-garbled")  # a live VM we cannot read counts as a user
    garbled.path.mkdir()
    garbled.runtime_metadata.write_text("{")
    lock_holders.append(_hold_lock(garbled))
    assert live_users(runners, v1.path) == ["r-garbled (metadata unreadable: may use it)", "r-live"]
    gone = lock_holders.pop()
    gone.kill()
    gone.wait()

    d = edit(store, "mac", copy=True)
    assert d.meta.version == "2" and d.meta.parent_version == "1"
    (d.path / "Disk.img").write_bytes(b"new disk")
    with pytest.raises(TemplateError, match="in use by 1 live VM.*r-live"):
        freeze(store, "mac", runners_dir=runners)
    with pytest.raises(TemplateError, match="runners directory"):
        freeze(store, "mac", runners_dir=None)
    assert TemplateMetadata.read(store.path("mac")).version == "1" and verify(store.path("mac")).ok
    assert store.draft_path("mac").is_dir()

    lock_holders[0].kill()
    lock_holders[0].wait()
    v2 = freeze(store, "mac", runners_dir=runners)
    assert (v2.meta.version, v2.meta.parent_version, v2.meta.ssh_host_key) == ("2", "1", key)
    assert v2.disk.read_bytes() == b"new disk" and verify(v2.path).ok
    assert not store.draft_path("mac").exists() and list(store.retired_dir.iterdir()) == []


def test_publishing_survives_a_crash_between_the_renames(
    store: TemplateStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = _host_pub()
    _draft(store, "mac")
    freeze(store, "mac", runners_dir=None, host_key=key)
    edit(store, "mac", copy=True)
    real_move = freeze_mod.move_dir
    calls: list[Path] = []

    def crash_on_second(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the host dies after the old version was moved aside
        real_move(src, dst)

    monkeypatch.setattr(freeze_mod, "move_dir", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        freeze(store, "mac", runners_dir=tmp_path / "runners")
    assert store.draft_path("mac").is_dir(), "never a moment with neither template nor draft"
    _assert_frozen(store.draft_path("mac"))
    monkeypatch.setattr(freeze_mod, "move_dir", real_move)
    t = freeze(store, "mac", runners_dir=tmp_path / "runners")  # running it again finishes the job
    assert t.meta.version == "2" and verify(t.path).ok
    assert list(store.retired_dir.iterdir()) == []


def test_freeze_refuses_a_draft_made_from_an_older_version(store: TemplateStore, tmp_path: Path) -> None:
    _draft(store, "mac")
    freeze(store, "mac", runners_dir=None, host_key=_host_pub())
    edit(store, "mac", copy=True)
    # someone else froze v2 meanwhile: our draft (parent 1) must not silently replace it
    d = Draft.open(store, "mac")
    write_metadata(d.path, d.meta.model_copy(update={"parent_version": "0"}))
    with pytest.raises(TemplateError, match="made from version 0 but the template is now version 1"):
        freeze(store, "mac", runners_dir=tmp_path / "runners")


def test_freeze_without_a_draft(store: TemplateStore) -> None:
    with pytest.raises(TemplateError, match="no draft of 'nope'"):
        freeze(store, "nope", runners_dir=None)


def test_modes_round_trip_and_frozen_moves(tmp_path: Path) -> None:
    from shoes_vz.template.modes import make_read_only, move_dir, remove_tree

    root = tmp_path / "t"
    (root / "sub").mkdir(parents=True)
    (root / "f").write_text("x")
    (root / "sub" / "g").write_text("y")
    make_read_only(root)
    _assert_frozen(root)
    (tmp_path / "elsewhere").mkdir()
    move_dir(root, tmp_path / "elsewhere" / "t")
    _assert_frozen(tmp_path / "elsewhere" / "t")
    make_writable(tmp_path / "elsewhere" / "t")
    assert all(p.stat().st_mode & stat.S_IWUSR for p in (tmp_path / "elsewhere" / "t").rglob("*"))
    make_read_only(tmp_path / "elsewhere" / "t")
    remove_tree(tmp_path / "elsewhere" / "t")
    remove_tree(tmp_path / "never-existed")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# -- edit ---------------------------------------------------------------------------------------------


def test_edit_makes_a_writable_next_version_and_leaves_the_frozen_one(tmp_path: Path) -> None:
    t = init_sim(tmp_path, "sim", disk_bytes=GIB)
    before = {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in [t.path, *t.path.rglob("*")]}
    store = TemplateStore(tmp_path)
    d = edit(store, "sim", copy=True)
    assert (d.meta.version, d.meta.parent_version, d.meta.frozen_at, d.meta.digests) == ("2", "1", None, {})
    assert d.meta.ssh_host_key == t.meta.ssh_host_key  # kept: the guest disk still has that key
    assert sorted(str(p.relative_to(d.path)) for p in d.path.rglob("*")) == sorted(
        str(p.relative_to(t.path)) for p in t.path.rglob("*"))
    assert all(p.stat().st_mode & stat.S_IWUSR for p in [d.path, *d.path.rglob("*")])
    assert (d.path / "Disk.img").stat().st_size == GIB
    assert before == {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in [t.path, *t.path.rglob("*")]}
    assert verify(t.path).ok
    with pytest.raises(TemplateError, match="already exists"):
        edit(store, "sim", copy=True)
    with pytest.raises(TemplateError, match="no template named 'missing'"):
        edit(store, "missing")
    # freezing the edited draft re-reads the sim host key and replaces v1
    v2 = freeze(store, "sim", runners_dir=tmp_path / "runners")
    assert v2.meta.version == "2" and verify(v2.path).ok


def test_edit_on_a_volume_that_cannot_clone_needs_copy(no_clone_dir: Path) -> None:
    from shoes_vz.core.errors import CloneError

    init_sim(no_clone_dir, "sim", disk_bytes=GIB)
    with pytest.raises(CloneError, match="does not support copy-on-write"):
        edit(TemplateStore(no_clone_dir), "sim")
    assert list((no_clone_dir / ".drafts").iterdir()) == []


# -- verify -------------------------------------------------------------------------------------------


def _tamper(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.chmod(path, 0o444)


def test_verify_lists_every_problem(tmp_path: Path) -> None:
    t = init_sim(tmp_path, "sim", disk_bytes=GIB)
    make_writable(t.path)
    _tamper(t.disk, b"changed")
    (t.path / "extra.txt").write_text("hi")
    os.symlink("/etc/passwd", t.path / "link")
    meta = t.meta.model_copy(update={"ssh_host_key": ""})
    write_metadata(t.path, meta)
    os.chmod(t.path / "sim", 0o555)
    problems = verify(t.path).problems
    text = "\n".join(problems)
    assert "Disk.img does not match its recorded digest" in text
    assert "extra.txt is not recorded in the digests" in text
    assert "link is a symlink" in text
    assert "no pinned SSH host key" in text
    assert ". is writable" in text and "extra.txt is writable" in text
    assert "sim is writable" not in text
    with pytest.raises(TemplateError, match="Disk.img does not match"):
        t.check()


def test_verify_malformed_and_legacy_templates(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "TemplateMetadata.json").write_text("{not json")
    v = verify(bad)
    assert not v.ok and "invalid metadata" in v.problems[-1]
    assert "not a directory" in verify(tmp_path / "missing").problems[0]
    # what earlier init-sim wrote: bare sha256 of two small files, no Disk.img digest
    old = tmp_path / "old"
    old.mkdir()
    _write_draft_files(old, "old", ssh_host_key=_host_pub())
    legacy = {n: hashlib.sha256((old / n).read_bytes()).hexdigest() for n in ("AuxiliaryStorage",
                                                                               "HardwareModel.json")}
    write_metadata(old, TemplateMetadata.read(old).model_copy(update={"digests": legacy}))
    for p in [*old.iterdir(), old]:
        os.chmod(p, 0o555 if p.is_dir() else 0o400 if is_private(p.name) else 0o444)
    assert verify(old).problems == ["Disk.img has no recorded digest (freeze records it)"]


def test_a_sim_guest_tree_is_frozen_with_its_executables_still_executable(tmp_path: Path) -> None:
    from shoes_vz.template import init_sim
    from shoes_vz.template.verify import verify

    tree = tmp_path / "tree"
    (tree / "usr/local/bin").mkdir(parents=True)
    (tree / "usr/local/bin/tool").write_text("#!/bin/sh\necho hi\n")
    (tree / "usr/local/bin/tool").chmod(0o755)
    (tree / "usr/local/bin/data").write_text("plain\n")
    t = init_sim(tmp_path / "templates", "with-tree", guest_root=tree)
    root = t.path / "sim" / "root" / "usr/local/bin"
    assert stat.S_IMODE((root / "tool").stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o444
    assert verify(t.path).problems == []
