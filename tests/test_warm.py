"""Warm slots end to end with the sim driver: real `vm run` processes, OpenSSH guests, runner-agents.

A slot is made by booting, waiting for SSH + runner-agent and saving (DESIGN §12); runners restore
from a free slot, keep its IP/MAC, never share one, and fall back to a cold boot on a bad state.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from simvm import dhcp_log_count
from stack_fixtures import SimStack, agent_settings, eventually, have_sshd, make_stack, require, require_namespaced
from typer.testing import CliRunner

from shoes_vz.agent.host_key import probe_host_key
from shoes_vz.agent.vm_files import fill_from_slot
from shoes_vz.agent.warm import SLOT_FILE, WarmPool, WarmSlot, fitting_slots
from shoes_vz.agent.warm_build import SlotBuilder, WarmError
from shoes_vz.cli.main import app
from shoes_vz.core.errors import ConfigError
from shoes_vz.core.states import Phase
from shoes_vz.template import TemplateStore, init_sim
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers import sim_state
from shoes_vz.vm.identity_files import read_data_representation
from shoes_vz.vm.leases import MACAddress
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def builder(stack: SimStack, events: list[str] | None = None) -> SlotBuilder:
    return SlotBuilder(stack.agent.settings, stack.template, (events if events is not None else []).append)


async def agent_sees(stack: SimStack, counts: tuple[int, int]) -> None:
    """The agent reads slots off the loop with each Sync: a new slot is in use within a heartbeat."""
    await eventually(lambda: stack.agent.warm.counts(stack.template) == counts, timeout=10)


def _rewrite_frozen(path: Path, data: bytes) -> None:
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.chmod(path, 0o444)
    os.chmod(path.parent, 0o555)


async def _runner_for(stack: SimStack, name: str) -> object:
    return next(r for r in stack.agent.runners.values() if r.spec.runner_name == name)


async def test_slot_is_a_saved_frozen_vm(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        events: list[str] = []
        report = await builder(stack, events).ensure(1)
        assert len(report.built) == 1 and not report.kept and not report.removed
        slot = report.built[0]
        names = {p.name for p in slot.path.iterdir()}
        assert {"Disk.img", "AuxiliaryStorage", "HardwareModel.json", "MachineIdentifier.json", "State.save",
                SLOT_FILE, "build.log"} <= names
        assert not names & {"control.sock", "vm.lock", "RuntimeMetadata.json", "guest"}
        for p in [slot.path, *slot.path.iterdir()]:
            assert not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), p
        # the slot has its own bound identity and the saved state belongs to its MAC and address
        assert read_data_representation(slot.bundle.machine_identifier)
        saved = json.loads(slot.bundle.saved_state.read_text())
        assert saved["mac_address"] == str(slot.mac) and saved["ip_address"] == slot.ip
        assert WarmSlot.read(slot.path) == slot
        await agent_sees(stack, (1, 1))
        assert any("saving the VM state" in e for e in events)
        # nothing half-made beside it, and the template was never written
        assert [p.name for p in slot.path.parent.iterdir()] == [slot.path.name]
        stack.template.check()


async def test_runners_restore_from_distinct_slots_and_keep_their_address(tmp_path: Path) -> None:
    # three VMs at once: a sim host may run more than Apple's 2 when told so
    async with make_stack(tmp_path, max_runners=3, host_vm_limit=3) as stack:
        slots = (await builder(stack).ensure(2)).built
        await agent_sees(stack, (2, 2))
        by_mac = {s.mac: s for s in slots}
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            answers = await asyncio.gather(*(stack.add(stub, f"warm-{i}") for i in range(3)))
            runners = [await _runner_for(stack, f"warm-{i}") for i in range(3)]
            warm = [r for r in runners if r.spec.warm_slot is not None]  # type: ignore[attr-defined]
            cold = [r for r in runners if r.spec.warm_slot is None]  # type: ignore[attr-defined]
            assert len(warm) == 2 and len(cold) == 1
            assert {r.mac for r in warm} == set(by_mac)  # type: ignore[attr-defined]
            for r in warm:
                assert r.restored is True  # type: ignore[attr-defined]
                assert r.ip == by_mac[r.mac].ip  # type: ignore[attr-defined]
            assert cold[0].mac not in by_mac and cold[0].restored is None  # type: ignore[attr-defined]
            assert {a.ip_address for a in answers} == {r.ip for r in runners}  # type: ignore[attr-defined]
            assert stack.agent.warm.counts(stack.template) == (2, 0)
            # a slot is free again once its runner is gone, and the next runner restores from it
            freed = warm[0]
            stack.agent.handle_delete("del-1", freed.runner_id)  # type: ignore[attr-defined]
            await eventually(lambda: stack.agent.warm.counts(stack.template) == (2, 1))
            store = stack.server.store  # and the server has heard it is gone (its slot is free for placement)
            await eventually(lambda: store.call(lambda: len(store.live_runners()) == 2))
            await stack.add(stub, "warm-again")
            again = await _runner_for(stack, "warm-again")
            assert again.restored is True and again.mac == freed.mac  # type: ignore[attr-defined]
        # the slots themselves are untouched by their runners: their state is still there
        assert all(s.bundle.saved_state.is_file() for s in slots)


async def test_bad_saved_state_falls_back_to_a_cold_boot(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        slot = (await builder(stack).ensure(1)).built[0]
        await agent_sees(stack, (1, 1))
        _rewrite_frozen(slot.bundle.saved_state, b'{"format": "shoes-vz-sim-state/1", "mac_address": "nope"}')
        async with stack.channel() as ch:
            answer = await stack.add(sgrpc.ShoesServiceStub(ch), "fallback")
        runner = await _runner_for(stack, "fallback")
        assert runner.phase == Phase.RUNNING and answer.ip_address  # type: ignore[attr-defined]
        assert runner.restored is False and runner.mac == slot.mac  # type: ignore[attr-defined]
        b: Bundle = runner.bundle  # type: ignore[attr-defined]
        meta = b.read_metadata()
        assert "belongs to MAC nope" in meta["restore_error"]
        assert not b.saved_state.exists()  # single-use, and deleted on refusal
        # a fresh identity, never the slot's
        assert read_data_representation(b.machine_identifier) != read_data_representation(
            slot.bundle.machine_identifier)


async def test_ensure_trims_replaces_stale_and_respects_limits(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        b = builder(stack)
        with pytest.raises(ConfigError, match="max_runners"):
            await b.ensure(3)
        two = (await b.ensure(2)).built
        report = await b.ensure(1)
        assert len(report.kept) == 1 and len(report.removed) == 1 and not report.built
        kept = report.kept[0]
        # a slot made from another template version is stale: never used, replaced by the next ensure
        raw = json.loads((kept.path / SLOT_FILE).read_text())
        _rewrite_frozen(kept.path / SLOT_FILE, json.dumps({**raw, "version": "0"}).encode())
        await agent_sees(stack, (0, 0))
        report = await b.ensure(1)
        assert report.removed == [kept.path] and len(report.built) == 1
        await agent_sees(stack, (1, 1))
        assert report.built[0].mac not in {s.mac for s in two}
        # a slot a live runner was cloned from is kept until that runner is gone
        async with stack.channel() as ch:
            await stack.add(sgrpc.ShoesServiceStub(ch), "holder")
        report = await b.ensure(0)
        assert report.busy == [report_path := (await _runner_for(stack, "holder")).spec.warm_slot.path]  # type: ignore[attr-defined]
        assert report_path.exists()


async def test_build_failure_leaves_nothing(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        # a certificate the guest does not accept (expired when it is used): SSH never gets ready
        settings = stack.agent.settings.model_copy(update={"ssh_cert_ttl": 0.001, "ip_to_ssh_timeout": 1.0})
        b = SlotBuilder(settings, stack.template, lambda _m: None)
        with pytest.raises(WarmError, match="warm slot 1 of 1 for sim-test"):
            await b.ensure(1)
        assert list(b.root.iterdir()) == []
        assert not list(settings.runners_dir.glob("warm-*"))
        assert fitting_slots(settings.templates_dir, stack.template, "sim") == []


def test_sim_state_refuses_another_configuration(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path / "b.bundle")
    bundle.path.mkdir()
    for p, data in ((bundle.disk, b"disk"), (bundle.aux_storage, b"aux"), (bundle.hardware_model, b"{}"),
                    (bundle.machine_identifier, b'{"dataRepresentation": "AAAA"}')):
        p.write_bytes(data)
    mac = MACAddress.parse("02:00:00:00:00:01")
    sim_state.save(bundle, mac, "127.100.0.9")
    assert sim_state.load(bundle, mac)["ip_address"] == "127.100.0.9"
    with pytest.raises(sim_state.RestoreRefused, match="belongs to MAC"):
        sim_state.load(bundle, MACAddress.parse("02:00:00:00:00:02"))
    bundle.hardware_model.write_bytes(b'{"dataRepresentation": "b3RoZXI="}')  # another hardware model
    with pytest.raises(sim_state.RestoreRefused, match="changed since the save: hardware_model$"):
        sim_state.load(bundle, mac)
    bundle.hardware_model.write_bytes(b"{}")
    with bundle.disk.open("ab") as f:
        f.write(b"changed")
    with pytest.raises(sim_state.RestoreRefused, match="changed since the save: disk$"):
        sim_state.load(bundle, mac)
    bundle.saved_state.write_text("not json")
    with pytest.raises(sim_state.RestoreRefused, match="unreadable"):
        sim_state.load(bundle, mac)


def test_cli_warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    init_sim(tmp_path / "templates", "cli-warm")
    s = agent_settings(tmp_path, 1)
    for key in ("lease_file", "runners_dir", "state_dir", "allow_copy", "driver", "stop_grace"):
        monkeypatch.setenv(f"SHOESVZ_AGENT_{key.upper()}", str(getattr(s, key)).lower()
                           if isinstance(getattr(s, key), bool) else str(getattr(s, key)))
    args = ["template", "warm", "cli-warm", "--templates-dir", str(tmp_path / "templates")]
    result = CliRunner().invoke(app, [*args, "--slots", "1"])
    assert result.exit_code == 0, result.output
    assert "built" in result.output
    result = CliRunner().invoke(app, [*args, "--slots", "9"])
    assert result.exit_code == 1 and "max_runners" in result.output
    result = CliRunner().invoke(app, [*args[:2], "no-such", "--slots", "1"])
    assert result.exit_code == 1 and "no template named 'no-such'" in result.output


async def test_host_key_probe_reads_the_guest_key(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        key = await probe_host_key(stack.agent.settings, stack.template.path)
        assert key.split()[:2] == stack.template.meta.ssh_host_key.split()[:2]
        assert not list(stack.agent.settings.runners_dir.glob("*.building"))


def test_edit_freeze_with_boot_then_rewarm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The maintenance path: slots of v1, edit → freeze --boot (v2) → old slots stale → warm again."""
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    require_namespaced()  # the scratch boot is seen in the DHCP server's log
    templates = tmp_path / "templates"
    init_sim(templates, "cycle")
    s = agent_settings(tmp_path, 1)
    for key in ("lease_file", "runners_dir", "state_dir", "allow_copy", "driver", "stop_grace"):
        value = getattr(s, key)
        monkeypatch.setenv(f"SHOESVZ_AGENT_{key.upper()}",
                           str(value).lower() if isinstance(value, bool) else str(value))
    dirs = ["--templates-dir", str(templates)]
    cli = CliRunner()
    assert cli.invoke(app, ["template", "warm", "cycle", "--slots", "1", *dirs]).exit_code == 0
    copy = ["--copy"] if s.allow_copy else []  # no reflink on this filesystem: dev-only full copy
    result = cli.invoke(app, ["template", "edit", "cycle", *copy, *dirs])
    assert result.exit_code == 0, result.output
    acks_before = dhcp_log_count(s.lease_file, r"DHCPACK\(")
    result = cli.invoke(app, ["template", "freeze", "cycle", "--boot", "--runners-dir", str(s.runners_dir), *dirs])
    assert result.exit_code == 0, result.output
    assert "v2 frozen" in result.output and "warm slots of cycle v1 no longer fit" in result.output
    # a scratch guest booted for the key: the DHCP server gave it an address (its lease went with it)
    assert dhcp_log_count(s.lease_file, r"DHCPACK\(") == acks_before + 1
    assert not list(s.runners_dir.glob("*.building"))
    v2 = TemplateStore(templates).get("cycle")
    assert v2.meta.version == "2" and v2.meta.ssh_host_key
    assert fitting_slots(templates, v2, "sim") == []  # v1's slot is stale
    result = cli.invoke(app, ["template", "warm", "cycle", "--slots", "1", *dirs])
    assert result.exit_code == 0 and "removed" in result.output and "built" in result.output, result.output
    assert len(fitting_slots(templates, v2, "sim")) == 1
    old = templates / ".warm" / "cycle" / "1"
    assert not old.exists() or not list(old.iterdir())


async def test_a_restarted_agent_still_knows_which_slot_is_held(tmp_path: Path) -> None:
    from shoes_vz.agent.app import Agent

    async with make_stack(tmp_path) as stack:
        slots = (await builder(stack).ensure(2)).built
        await agent_sees(stack, (2, 2))
        async with stack.channel() as ch:
            await stack.add(sgrpc.ShoesServiceStub(ch), "kept-warm")
        old = await _runner_for(stack, "kept-warm")
        held = old.spec.warm_slot  # type: ignore[attr-defined]
        assert held is not None and held.path in {s.path for s in slots}
        await stack.agent.stop(tear_down=False)  # the VM outlives the agent
        new = Agent(stack.agent.settings.model_copy(update={"notify_url": ""}))
        await new.start()
        try:
            adopted = new.runners[old.runner_id]  # type: ignore[attr-defined]
            assert adopted.phase == Phase.RUNNING and adopted.spec.warm_slot == held and adopted.restored is True
            assert new.warm.counts(stack.template) == (2, 1)
            other = new.warm.claim(stack.template, "someone-else")
            assert other is not None and other.path != held.path  # the held slot is never handed out twice
            assert new.warm.claim(stack.template, "a-third") is None
        finally:
            await new.stop(tear_down=True)
        stack.agent = new


async def test_a_slot_that_vanishes_after_the_claim_means_a_cold_boot(tmp_path: Path) -> None:
    async with make_stack(tmp_path) as stack:
        slot = (await builder(stack).ensure(1)).built[0]
        dst = Bundle(tmp_path / "dst.bundle")
        dst.path.mkdir()
        os.chmod(slot.path, 0o755)
        slot.bundle.saved_state.unlink()  # e.g. removed by hand between the claim and the clone
        assert not fill_from_slot(dst, stack.template, slot, allow_copy=True)
        assert list(dst.path.iterdir()) == []  # nothing half-cloned left for the cold path
        # through the agent: the runner still starts (cold, with the slot's MAC, which it holds)
        claimed = stack.agent.warm.claim
        stack.agent.warm.claim = lambda template, runner_id: slot  # type: ignore[method-assign]
        async with stack.channel() as ch:
            await stack.add(sgrpc.ShoesServiceStub(ch), "vanished")
        stack.agent.warm.claim = claimed  # type: ignore[method-assign]
        runner = await _runner_for(stack, "vanished")
        assert runner.phase == Phase.RUNNING and runner.mac == slot.mac  # type: ignore[attr-defined]
        assert runner.restored is None  # type: ignore[attr-defined]


def test_an_unreadable_slot_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = init_sim(tmp_path / "templates", "x")
    broken = tmp_path / "templates" / ".warm" / "x" / t.meta.version / "slot-broken"
    broken.mkdir(parents=True)
    (broken / SLOT_FILE).write_text("{not json")
    pool = WarmPool(tmp_path / "templates", "sim")
    for _ in range(3):  # as with three Sync messages
        pool.refresh([t])
    assert pool.counts(t) == (0, 0)
    assert caplog.text.count("ignoring warm slot") == 1 and "template warm x --slots N" in caplog.text
