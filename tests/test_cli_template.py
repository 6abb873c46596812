"""`shoes-vz template …` as a user runs it (typer's CliRunner: the real command, in process)."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
import pytest
from test_template_tart import make_tart_vm
from typer.testing import CliRunner, Result

from shoes_vz.cli.main import app
from shoes_vz.template import TemplateStore

GIB = 1024**3


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["template", *args])


@pytest.fixture
def tdir(tmp_path: Path) -> Path:
    return tmp_path / "templates"


def test_import_freeze_verify_list_edit(tmp_path: Path, tdir: Path) -> None:
    src = make_tart_vm(tmp_path / "vm")
    opts = ["--templates-dir", str(tdir)]
    r = run("import-tart", str(src), "sonoma", *opts, "--copy", "--cpu", "2", "--memory-gib", "6",
            "--resource-types", "small,medium")
    assert r.exit_code == 0, r.output
    assert "draft sonoma v1" in r.stdout and "--copy" in r.stderr
    r = run("list", *opts)
    assert "sonoma" in r.stdout and "draft" in r.stdout and "6 GiB" in r.stdout and "small, medium" in r.stdout

    r = run("freeze", "sonoma", *opts, "--runners-dir", str(tmp_path / "runners"))
    assert r.exit_code == 1 and "no SSH host key to pin" in r.stderr and "Traceback" not in r.output
    r = run("freeze", "sonoma", *opts, "--host-key", "ssh-ed25519 garbage")
    assert r.exit_code == 1 and "not an OpenSSH public key" in r.stderr
    pub = tmp_path / "host.pub"
    pub.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    r = run("freeze", "sonoma", *opts, "--host-key", str(pub), "--runners-dir", str(tmp_path / "runners"))
    assert r.exit_code == 0, r.output
    assert "frozen" in r.stdout and "ssh-ed25519" in r.stdout

    r = run("verify", "sonoma", *opts)
    assert r.exit_code == 0 and "intact" in r.stdout
    r = run("list", *opts)
    assert "frozen" in r.stdout and "draft" not in r.stdout

    r = run("edit", "sonoma", *opts, "--copy")
    assert r.exit_code == 0 and "v2 (from v1)" in r.stdout
    assert run("edit", "sonoma", *opts, "--copy").exit_code == 1
    r = run("list", *opts)
    assert "frozen" in r.stdout and "draft" in r.stdout

    disk = TemplateStore(tdir).path("sonoma") / "Disk.img"
    os.chmod(disk, 0o644)
    with open(disk, "r+b") as f:
        f.write(b"tampered")
    r = run("verify", "sonoma", *opts)
    assert r.exit_code == 1
    assert "2 problem(s)" in r.stderr and "Disk.img is writable" in r.stderr
    assert "Disk.img does not match its recorded digest" in r.stderr and "fix:" in r.stderr


def test_bad_input_is_a_clear_error(tmp_path: Path, tdir: Path) -> None:
    opts = ["--templates-dir", str(tdir)]
    cases = [
        (("import-tart", str(tmp_path / "missing"), "x", *opts), "is not a directory"),
        (("import-tart", str(make_tart_vm(tmp_path / "linux", os="linux")), "x", *opts), "only macOS"),
        (("freeze", "nope", *opts), "no draft of 'nope'"),
        (("verify", "nope", *opts), "no template named 'nope'"),
        (("verify", "../etc", *opts), "invalid"),
        (("edit", "nope", *opts), "no template named 'nope'"),
        (("init-sim", "bad name", *opts), "invalid"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.output
    r = run("import-tart", str(tmp_path / "linux"), "x", *opts, "--cpu", "0")
    assert r.exit_code == 2  # typer's own usage error
    assert not (tdir / ".drafts").exists() or os.listdir(tdir / ".drafts") == []


def test_list_shows_a_broken_template(tdir: Path) -> None:
    (tdir / "broken").mkdir(parents=True)
    (tdir / "broken" / "TemplateMetadata.json").write_text("{")
    (tdir / ".warm").mkdir()  # dot directories are never templates
    r = run("list", "--templates-dir", str(tdir))
    assert r.exit_code == 0 and "broken" in r.stdout and ".warm" not in r.stdout


def test_init_sim_then_verify(tdir: Path) -> None:
    r = run("init-sim", "s", "--templates-dir", str(tdir), "--disk-gib", "1")
    assert r.exit_code == 0 and "template s" in r.stdout
    assert run("verify", "s", "--templates-dir", str(tdir)).exit_code == 0
