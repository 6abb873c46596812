"""Resource types → templates: the server's mapping (config), the scheduler's matching with the
mapping and without it, warm-slot preference, and the template build digest."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_store_scheduler import add_agent, open_store

from shoes_vz import config
from shoes_vz.core.errors import CapacityExhausted, ConfigError, InvalidInput
from shoes_vz.core.ids import validate_runner_name, validate_template_name
from shoes_vz.server.scheduler import NoAgents, Scheduler
from shoes_vz.server.store import HeldTemplate, Store
from shoes_vz.template import TemplateMetadata

MAPPING = {"small": "macos-15", "large": "macos-15-big"}
MAC15 = HeldTemplate("macos-15", version="3", resource_types=("small",))
MAC15_BIG = HeldTemplate("macos-15-big", version="1")  # lists no types itself: the mapping decides


# -- configuration ------------------------------------------------------------------------------
def test_mapping_from_a_toml_table_with_upstream_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOESVZ_SERVER_RESOURCE_TYPES", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:1"\n\n[server.resource_types]\nsmall = "macos-15"\n'
                   'XLarge2 = "macos-15-big"\nxlarge4 = "macos-15-big"\n')
    s = config.load(config.ServerSettings, cfg)
    assert s.resource_types == {"small": "macos-15", "2xlarge": "macos-15-big", "4xlarge": "macos-15-big"}
    assert config.load(config.ServerSettings).resource_types == {}  # the embedded default: no mapping


def test_mapping_from_env_json_replaces_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server.resource_types]\nsmall = "from-file"\n')
    monkeypatch.setenv("SHOESVZ_SERVER_RESOURCE_TYPES", '{"medium": "from-env", "xlarge3": "big"}')
    s = config.load(config.ServerSettings, cfg)
    assert s.resource_types == {"medium": "from-env", "3xlarge": "big"}
    monkeypatch.setenv("SHOESVZ_SERVER_RESOURCE_TYPES", "{}")
    assert config.load(config.ServerSettings, cfg).resource_types == {}


@pytest.mark.parametrize(("toml", "expected"), [
    ('huge = "t"', "'huge': resource_type 'huge' is unknown"),
    ('unknown = "t"', "'unknown': resource_type 'unknown' is unknown"),
    ('small = "../etc"', "'small': template name '../etc' is invalid"),
    ('small = ".drafts"', "'small': template name '.drafts' is invalid"),
    ('small = "a b"', "'small': template name 'a b' is invalid"),
    ('small = ""', "'small': template name '' is invalid"),
    ("small = 3", "'small': template name must be a string, got 3"),
    ('xlarge2 = "a"\n"2xlarge" = "b"', "'xlarge2' and '2xlarge' are the same type with different templates"),
])
def test_bad_mapping_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str,
                                     expected: str) -> None:
    monkeypatch.delenv("SHOESVZ_SERVER_RESOURCE_TYPES", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server.resource_types]\n{toml}\n")
    with pytest.raises(ConfigError) as e:
        config.load(config.ServerSettings, cfg)
    assert "server.resource_types" in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize(("env", "expected"), [
    ('{"small": ', "not JSON"),
    ('["small"]', "must be a table / JSON object"),
    ("small=macos-15", "not JSON"),
    ('{"nano": "ok", "giant": "t"}', "'giant': resource_type 'giant' is unknown"),
])
def test_bad_mapping_in_env(monkeypatch: pytest.MonkeyPatch, env: str, expected: str) -> None:
    monkeypatch.setenv("SHOESVZ_SERVER_RESOURCE_TYPES", env)
    with pytest.raises(ConfigError) as e:
        config.load(config.ServerSettings)
    assert "server.resource_types" in str(e.value) and expected in str(e.value)


def test_server_command_stops_on_a_bad_mapping(tmp_path: Path) -> None:
    env = {**os.environ, "SHOESVZ_SERVER_RESOURCE_TYPES": '{"small": "../x"}', "SHOESVZ_CONFIG": ""}
    r = subprocess.run([sys.executable, "-m", "shoes_vz.cli.main", "server", "--db", str(tmp_path / "s.db")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "server.resource_types" in r.stderr and "template name '../x' is invalid" in r.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was made


def test_the_same_alias_twice_with_one_template_is_fine() -> None:
    s = config.ServerSettings(resource_types={"xlarge2": "big", "2xlarge": "big"})
    assert s.resource_types == {"2xlarge": "big"}


def test_template_and_runner_name_rules() -> None:
    for ok in ("macos-15", "sim_test", "macOS.15.4", "_x", "-x"):
        validate_template_name(ok)
    for bad in ("", ".hidden", "a/b", "..", "a b", "x\n", "é"):
        with pytest.raises(InvalidInput):
            validate_template_name(bad)
    with pytest.raises(InvalidInput):
        validate_runner_name("job-1\n")  # `$` alone would let a trailing newline through


# -- the template's build digest ----------------------------------------------------------------
def test_fingerprint_covers_name_version_and_digests_only() -> None:
    base = TemplateMetadata(name="macos-15", version="3", ssh_host_key="ssh-ed25519 AAAA",
                            digests={"HardwareModel.json": "aa", "AuxiliaryStorage": "bb"})
    canonical = '["macos-15","3",[["AuxiliaryStorage","bb"],["HardwareModel.json","aa"]]]'
    assert base.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()
    reordered = base.model_copy(update={"digests": {"AuxiliaryStorage": "bb", "HardwareModel.json": "aa"}})
    assert reordered.fingerprint() == base.fingerprint()
    resized = base.model_copy(update={"cpu_count": 8, "memory_bytes": 1, "resource_types": ["large"]})
    assert resized.fingerprint() == base.fingerprint()
    for change in ({"name": "macos-16"}, {"version": "4"}, {"digests": {"HardwareModel.json": "aa"}},
                   {"digests": {"HardwareModel.json": "aa", "AuxiliaryStorage": "cc"}}):
        assert base.model_copy(update=change).fingerprint() != base.fingerprint(), change


# -- matching -----------------------------------------------------------------------------------
async def _mapped_store(tmp_path: Path) -> Store:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", templates=[MAC15])
    await add_agent(store, "a2", templates=[MAC15_BIG, HeldTemplate("other", resource_types=("small",))])
    return store


async def test_mapping_decides_type_to_template_to_agent(tmp_path: Path) -> None:
    store = await _mapped_store(tmp_path)
    sched = Scheduler(store, MAPPING)
    small, cmd = await sched.reserve("j-small", "small", "", [])
    assert (small.agent_id, small.template, cmd.payload["template"]) == ("a1", "macos-15", "macos-15")
    large, _ = await sched.reserve("j-large", "large", "", [])
    assert (large.agent_id, large.template) == ("a2", "macos-15-big")
    # a2's "other" lists small itself, but with a mapping only the mapping counts
    again, _ = await sched.reserve("j-small-2", "small", "", [])
    assert (again.agent_id, again.template) == ("a1", "macos-15")
    await store.aclose()


async def test_unmapped_type_is_invalid_with_the_mapping_in_the_message(tmp_path: Path) -> None:
    store = await _mapped_store(tmp_path)
    with pytest.raises(InvalidInput) as e:
        await Scheduler(store, MAPPING).reserve("j", "medium", "", [])
    assert str(e.value) == ("resource_type 'medium' is not in the server's resource_types mapping; "
                            "server resource_types: small → macos-15, large → macos-15-big")
    assert await store.call(store.live_runners) == []  # nothing half-created
    await store.aclose()


async def test_mapped_template_no_agent_holds_is_invalid(tmp_path: Path) -> None:
    store = await _mapped_store(tmp_path)
    mapping = {**MAPPING, "xlarge": "macos-26"}
    with pytest.raises(InvalidInput) as e:
        await Scheduler(store, mapping).reserve("j", "xlarge", "", [])
    assert str(e.value) == (
        "resource_type 'xlarge' maps to template 'macos-26', which no registered agent holds (agents hold: "
        "macos-15, macos-15-big, other); server resource_types: small → macos-15, large → macos-15-big, "
        "xlarge → macos-26")
    await store.aclose()


async def test_template_only_on_an_offline_or_full_agent_is_capacity(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", slots=1, templates=[MAC15])
    await add_agent(store, "a2", online=False, templates=[MAC15_BIG])
    sched = Scheduler(store, MAPPING)
    with pytest.raises(CapacityExhausted, match="large .template macos-15-big.: 0 of 1 agents holding it online"):
        await sched.reserve("j-large", "large", "", [])
    await sched.reserve("j1", "small", "", [])
    with pytest.raises(CapacityExhausted, match="1 of 1 agents holding it online, all slots taken"):
        await sched.reserve("j2", "small", "", [])
    await store.aclose()


async def test_no_agents_is_unavailable_even_with_a_mapping(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    with pytest.raises(NoAgents):
        await Scheduler(store, MAPPING).reserve("j", "small", "", [])
    await store.aclose()


async def test_fallback_uses_the_templates_own_types_and_names_them(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", templates=[HeldTemplate("t-small", resource_types=("small", "medium"))])
    await add_agent(store, "a2", online=False, templates=[HeldTemplate("t-big", resource_types=("2xlarge",))])
    sched = Scheduler(store)
    row, _ = await sched.reserve("j", "medium", "", [])
    assert row.template == "t-small"
    with pytest.raises(CapacityExhausted):  # served by an offline agent's template: it may come back
        await sched.reserve("j2", "2xlarge", "", [])
    with pytest.raises(InvalidInput) as e:
        await sched.reserve("j3", "large", "", [])
    assert str(e.value) == (
        "no template on any registered agent serves resource_type 'large'; the agents' templates serve: "
        "small, medium, 2xlarge (no server resource_types mapping is configured, so each template's own "
        "resource_types decide)")
    await store.aclose()


# -- warm slots ---------------------------------------------------------------------------------
def warm(free: int, total: int = 2) -> list[HeldTemplate]:
    return [HeldTemplate("macos-15", resource_types=("small",), warm_slots=total, free_warm_slots=free)]


async def test_a_free_warm_slot_beats_a_less_loaded_cold_agent(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", slots=2, templates=warm(0))
    await add_agent(store, "a2", slots=2, templates=warm(2))
    sched = Scheduler(store, MAPPING)
    first, _ = await sched.reserve("j1", "small", "", [])
    second, _ = await sched.reserve("j2", "small", "", [])
    assert (first.agent_id, second.agent_id) == ("a2", "a2")  # warm even though a1 is idle
    third, _ = await sched.reserve("j3", "small", "", [])
    assert third.agent_id == "a1"  # a2 is full: never over-committed
    await store.aclose()


async def test_one_free_warm_slot_is_handed_out_once_until_the_next_report(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", slots=2, templates=warm(1))
    await add_agent(store, "a2", slots=2, templates=warm(1))
    await add_agent(store, "a3", slots=2, templates=warm(0))
    sched = Scheduler(store)
    placed = [(await sched.reserve(f"j{i}", "small", "", []))[0].agent_id for i in range(3)]
    assert placed == ["a1", "a2", "a3"]  # each warm slot once, then the least loaded
    # a1 reports again (its slot refilled): its warm slot counts from the report
    await store.call(store.set_agent_templates, "a1", warm(1))
    sched.templates_reported("a1")
    assert (await sched.reserve("j3", "small", "", []))[0].agent_id == "a1"
    await store.aclose()


async def test_concurrent_reservations_with_warm_slots_never_overcommit(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", slots=2, templates=warm(2))
    await add_agent(store, "a2", slots=2, templates=warm(0))
    sched = Scheduler(store, MAPPING)
    results = await asyncio.gather(*(sched.reserve(f"job-{i}", "small", "", []) for i in range(20)),
                                   return_exceptions=True)
    placed = [r[0].agent_id for r in results if not isinstance(r, BaseException)]
    assert sorted(placed) == ["a1", "a1", "a2", "a2"]
    assert sum(isinstance(r, CapacityExhausted) for r in results) == 16
    await store.aclose()


async def test_rows_written_before_the_new_fields_still_load(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1")
    store.db.execute("""UPDATE agents SET templates='[{"name": "old", "resource_types": ["small"]}]'""")
    (agent,) = await store.call(store.agents)
    assert agent.templates == [HeldTemplate("old", resource_types=("small",))]
    await store.aclose()
