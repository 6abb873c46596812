"""Configuration precedence and messages; sim templates and their safety checks."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from shoes_vz import config
from shoes_vz.core.errors import ConfigError, TemplateError
from shoes_vz.template import TemplateStore, init_sim


def test_defaults_are_the_seed_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOESVZ_CONFIG", raising=False)
    a = config.load(config.AgentSettings)
    assert a.templates_dir == Path("/opt/myshoes/vz/templates")
    assert a.runners_dir == Path("/opt/myshoes/vz/runners")
    assert a.runner_state_file == Path("/var/run/myshoes/runner-state.json")
    assert a.max_runners == 2 and a.host_vm_limit == 2
    assert a.effective_vm_slots_dir() == Path("/var/lib/shoes-vz/vm-slots")


def test_macos_defaults_belong_to_the_user_that_runs_vms(tmp_path: Path) -> None:
    from shoes_vz.core.host_defaults import paths_for, user_home

    home = tmp_path / "Users" / "svc"
    mac = paths_for("darwin", home)
    assert (mac.templates_dir, mac.runners_dir, mac.state_dir, mac.runner_state_file) == (
        home / ".shoes-vz/templates", home / ".shoes-vz/runners", home / ".shoes-vz/state",
        home / ".shoes-vz/runner-state.json")
    assert mac.lease_file == Path("/var/db/dhcpd_leases")  # bootpd's, readable by everyone
    for p in (mac.templates_dir, mac.runners_dir, mac.state_dir, mac.runner_state_file):
        assert p.is_relative_to(home), f"{p} would need root"
    assert mac.templates_dir.parent == mac.runners_dir.parent, "one volume: templates and runners clone"
    assert paths_for("linux", home) == paths_for("linux", Path("/elsewhere"))  # Linux keeps the seed's
    import pwd

    assert user_home() == Path(pwd.getpwuid(os.geteuid()).pw_dir)  # the user database, not $HOME


def test_the_vm_slots_follow_the_state_dir(tmp_path: Path) -> None:
    a = config.AgentSettings(state_dir=tmp_path / "state")
    assert a.effective_vm_slots_dir() == tmp_path / "state" / "vm-slots"
    assert config.AgentSettings(state_dir=tmp_path, vm_slots_dir=tmp_path / "s").effective_vm_slots_dir() == \
        tmp_path / "s"


def test_precedence_flags_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agent]\nmax_runners = 3\nserver_addr = "10.0.0.1:1"\n[server]\nlisten = "127.0.0.1:7"\n')
    monkeypatch.setenv("SHOESVZ_AGENT_MAX_RUNNERS", "4")
    a = config.load(config.AgentSettings, cfg)
    assert (a.max_runners, a.server_addr) == (4, "10.0.0.1:1")
    assert config.load(config.AgentSettings, cfg, max_runners=5).max_runners == 5
    assert config.load(config.ServerSettings, cfg).listen == "127.0.0.1:7"


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agent]\nmax_runners = "many"\ndriver = "qemu"\n')
    with pytest.raises(ConfigError) as e:
        config.load(config.AgentSettings, cfg)
    assert "agent.max_runners" in str(e.value) and "agent.driver" in str(e.value)
    cfg.write_text("[agent]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        config.load(config.AgentSettings, cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(config.AgentSettings, tmp_path / "missing.toml")
    cfg.write_text("[agent\n")
    with pytest.raises(ConfigError):
        config.load(config.AgentSettings, cfg)


def test_plaintext_refused_off_loopback() -> None:
    auth = dict(shoes_token="s" * 20, enrollment_token="e" * 20)  # without them: tests/security/test_safe_defaults.py
    with pytest.raises(ConfigError, match="plaintext"):
        config.ServerSettings(listen="0.0.0.0:50051", **auth).check_transport()
    config.ServerSettings(listen="0.0.0.0:50051", allow_plaintext=True, **auth).check_transport()
    config.ServerSettings(listen="127.0.0.1:50051").check_transport()


def test_init_sim_layout_and_freeze(tmp_path: Path) -> None:
    t = init_sim(tmp_path, "mac-sim", resource_types=["small", "medium"], disk_bytes=64 * 1024**3)
    names = {p.name for p in t.path.iterdir()}
    assert {"Disk.img", "AuxiliaryStorage", "HardwareModel.json", "TemplateMetadata.json", "README.md"} <= names
    st = t.disk.stat()
    assert st.st_size == 64 * 1024**3 and st.st_blocks * 512 < 1024 * 1024  # sparse
    meta = json.loads((t.path / "TemplateMetadata.json").read_text())
    assert meta["resource_types"] == ["small", "medium"] and meta["ssh_host_key"].startswith("ssh-ed25519 ")
    for p in [t.path, *t.path.rglob("*")]:
        assert not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), p
    t.check()
    assert TemplateStore(tmp_path).for_resource_type("medium").name == "mac-sim"
    assert TemplateStore(tmp_path).for_resource_type("xlarge") is None
    with pytest.raises(TemplateError, match="already exists"):
        init_sim(tmp_path, "mac-sim")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".drafts"]
    assert list((tmp_path / ".drafts").iterdir()) == []  # nothing half-made, the draft was published


def test_template_refused_when_writable_or_tampered(tmp_path: Path) -> None:
    t = init_sim(tmp_path, "t")
    os.chmod(t.hardware_model, 0o644)
    with pytest.raises(TemplateError, match="writable"):
        t.check()
    t.hardware_model.write_text("{}")
    os.chmod(t.hardware_model, 0o444)
    with pytest.raises(TemplateError, match="digest"):
        t.check()


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a b"])
def test_bad_template_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(TemplateError):
        init_sim(tmp_path, name)
    with pytest.raises(TemplateError):
        init_sim(tmp_path, "ok", resource_types=["huge"])
    assert list(tmp_path.iterdir()) == []
