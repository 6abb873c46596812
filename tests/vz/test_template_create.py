"""`shoes-vz template create`: a whole draft or nothing, and a clear refusal off macOS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakevz import FakeVZ, fake_ipsw_bytes
from typer.testing import CliRunner

from shoes_vz.cli.main import app
from shoes_vz.cli.template_create import create_draft
from shoes_vz.core import host_defaults as host_defaults_module
from shoes_vz.core.errors import InvalidInput, TemplateError
from shoes_vz.core.sizes import format_size, parse_size
from shoes_vz.macos import install
from shoes_vz.template import Template, TemplateMetadata, TemplateStore, init_sim
from shoes_vz.template.draft import write_metadata
from shoes_vz.template.modes import make_read_only, make_writable
from shoes_vz.vm.host_slots import HostSlots

GIB = 1 << 30


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "POLL_INTERVAL", 0.002)


@pytest.fixture(autouse=True)
def host_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The command's default state directory (where the host VM slots live) inside the test's tmp dir."""
    paths = host_defaults_module.paths_for("darwin", tmp_path / "home")
    monkeypatch.setattr(host_defaults_module, "DEFAULTS", paths)
    return paths.state_dir


@pytest.fixture
def ipsw(tmp_path: Path) -> Path:
    p = tmp_path / "UniversalMac_26.5_25F71_Restore.ipsw"
    p.write_bytes(fake_ipsw_bytes())
    return p


def create(templates: Path, ipsw: Path, *extra: str, name: str = "macos-26") -> tuple[int, str]:
    result = CliRunner().invoke(app, ["template", "create", name, "--ipsw", str(ipsw), "--templates-dir",
                                      str(templates), "--cache-dir", str(templates.parent / "cache"), *extra])
    return result.exit_code, result.output


class Quiet:
    def __init__(self, interrupt: bool = False) -> None:
        self.interrupt = interrupt

    def update(self, phase: str, fraction: float) -> None:
        if self.interrupt and phase == "install" and fraction > 0:
            raise KeyboardInterrupt


def test_create_makes_a_whole_unpinned_draft(fake_vz: FakeVZ, tmp_path: Path, ipsw: Path) -> None:
    templates = tmp_path / "templates"
    code, output = create(templates, ipsw, "--cpu", "6", "--memory", "12GiB", "--disk", "80G",
                          "--resource-types", "large,xlarge")
    assert code == 0, output
    assert "macOS 26.5 (25F71), 6 CPUs, 12 GiB memory, 80 GiB disk" in output
    draft = templates / ".drafts" / "macos-26"
    assert {p.name for p in draft.iterdir()} == {"Disk.img", "AuxiliaryStorage", "HardwareModel.json",
                                                 "TemplateMetadata.json", "README.md"}
    assert [p.name for p in (templates / ".drafts").iterdir()] == ["macos-26"]  # no temp dir left
    meta = json.loads((draft / "TemplateMetadata.json").read_text())
    assert {k: meta[k] for k in (
        "name", "driver", "version", "macos_build", "cpu_count", "memory_bytes", "disk_bytes", "resource_types",
        "ssh_host_key")} == {"name": "macos-26", "driver": "vz", "version": "1", "macos_build": "25F71",
                             "cpu_count": 6, "memory_bytes": 12 * GIB, "disk_bytes": 80 * GIB,
                             "resource_types": ["large", "xlarge"], "ssh_host_key": ""}
    assert (draft / "Disk.img").stat().st_size == 80 * GIB
    assert TemplateStore(templates).list() == []  # a draft is never served

    # the agent refuses it (Template.check runs before every clone) until freeze pins the host key
    with pytest.raises(TemplateError, match="no pinned SSH host key"):
        Template(draft, TemplateMetadata.read(draft)).check()


def test_an_unpinned_template_is_refused_even_when_frozen(tmp_path: Path) -> None:
    t = init_sim(tmp_path, "sim")
    Template(t.path, t.meta).check()
    make_writable(t.path)
    write_metadata(t.path, t.meta.model_copy(update={"ssh_host_key": "  "}))
    make_read_only(t.path)
    with pytest.raises(TemplateError, match="no pinned SSH host key.*shoes-vz template freeze"):
        Template(t.path, TemplateMetadata.read(t.path)).check()
    assert TemplateMetadata(name="draft").ssh_host_key == ""  # the model allows a draft's empty key


def test_create_refuses_a_taken_name(fake_vz: FakeVZ, tmp_path: Path, ipsw: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "frozen").mkdir(parents=True)
    code, output = create(templates, ipsw, name="frozen")
    assert code == 1 and "already exists" in output
    assert create(templates, ipsw)[0] == 0
    code, output = create(templates, ipsw)
    assert code == 1 and "a draft named 'macos-26' already exists" in output
    code, output = create(templates, ipsw, name="../evil")
    assert code == 1 and "invalid" in output
    code, output = create(templates, ipsw, "--resource-types", "huge", name="x")
    assert code == 1 and "unknown resource types ['huge']" in output
    assert len(fake_vz.vms) == 1  # only the one good create ran an installer


def test_a_failed_install_leaves_no_draft(fake_vz: FakeVZ, tmp_path: Path, ipsw: Path) -> None:
    templates = tmp_path / "templates"
    fake_vz.knobs.install_error = ("VZErrorDomain", 10006, "The installation requires a software update.")
    code, output = create(templates, ipsw)
    assert code == 1
    assert "update macOS on the host" in output and "resumable" in output
    assert list((templates / ".drafts").iterdir()) == []


def test_ctrl_c_leaves_no_draft(fake_vz: FakeVZ, tmp_path: Path, ipsw: Path) -> None:
    templates = tmp_path / "templates"
    with pytest.raises(KeyboardInterrupt):
        create_draft(templates, "t", ipsw=str(ipsw), cpu_count=4, memory_bytes=8 * GIB, disk_bytes=GIB,
                     cache_dir=tmp_path / "cache", resource_types=[], progress=Quiet(interrupt=True),
                     host_slots=HostSlots(tmp_path / "slots", 2))
    assert list((templates / ".drafts").iterdir()) == []


def test_bad_sizes_are_usage_errors(fake_vz: FakeVZ, tmp_path: Path, ipsw: Path) -> None:
    code, output = create(tmp_path / "templates", ipsw, "--memory", "lots")
    assert code == 2 and "size 'lots'" in output
    assert not (tmp_path / "templates").exists()


@pytest.mark.parametrize(("text", "value"), [("8G", 8 * GIB), ("8GiB", 8 * GIB), ("8192M", 8 * GIB),
                                             ("64g", 64 * GIB), ("1T", 1 << 40), ("4096", 4096), ("8 GB", 8 * GIB)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "8X", "-1", "0", "1.5G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (8 * GIB, 1536 << 20, 513)] == ["8 GiB", "1536 MiB", "513 bytes"]


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal on a host without Virtualization")
def test_off_macos_it_says_what_it_needs(tmp_path: Path, ipsw: Path) -> None:
    # a real process without the fake: no PyObjC here, as on any Linux host
    r = subprocess.run([sys.executable, "-m", "shoes_vz.cli.main", "template", "create", "m", "--ipsw", str(ipsw),
                        "--templates-dir", str(tmp_path / "templates")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "needs macOS with Virtualization.framework" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "templates").exists()  # nothing was written
