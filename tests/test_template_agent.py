"""The agent and templates: full verification at start (cached), refusal, cheap per-runner checks, and
a runner's whole life never writing into its template."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from stack_fixtures import SimStack, agent_settings, eventually

from shoes_vz.agent.app import Agent
from shoes_vz.core.errors import ConfigError, TemplateError
from shoes_vz.core.states import Phase
from shoes_vz.template import TemplateStore, UsableTemplates, init_sim, verify
from shoes_vz.template.draft import write_metadata
from shoes_vz.template.modes import make_read_only, make_writable
from shoes_vz.template.verify import DigestCache
from shoes_vz.vm import digest as digest_mod
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

GIB = 1024**3


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files actually read for a digest (a spy on the one hashing entry point)."""
    names: list[str] = []
    real = digest_mod.digest_with

    def spy(algo: str, path: Path, progress: Any = None) -> str:
        names.append(path.name)
        return real(algo, path, progress)

    monkeypatch.setattr(digest_mod, "digest_with", spy)
    return names


def _rewrite(template: Path, rel: str, data: bytes) -> None:
    make_writable(template)
    (template / rel).write_bytes(data)
    make_read_only(template)


def test_digest_cache_skips_unchanged_files_across_restarts(tmp_path: Path, hashed: list[str]) -> None:
    t = init_sim(tmp_path / "templates", "sim", disk_bytes=GIB)
    cache_file = tmp_path / "state" / "template-digests.json"
    assert verify(t.path, cache=(c := DigestCache(cache_file))).ok
    c.save()
    first = sorted(hashed)
    assert "Disk.img" in first and len(first) == len(t.meta.digests)
    hashed.clear()
    assert verify(t.path, cache=DigestCache(cache_file)).ok  # "after a restart": nothing re-read
    assert hashed == []
    os.chmod(t.aux_storage, 0o644)  # only this file's inode changes (a re-freeze would touch every ctime)
    t.aux_storage.write_bytes(b"tampered")
    os.chmod(t.aux_storage, 0o444)
    v = verify(t.path, cache=DigestCache(cache_file))
    assert hashed == ["AuxiliaryStorage"] and v.problems == ["AuxiliaryStorage does not match its recorded digest"]
    (cache_file).write_text("{garbage")  # a broken cache is only a cache miss
    hashed.clear()
    assert not verify(t.path, cache=DigestCache(cache_file)).ok and len(hashed) == len(t.meta.digests)


def _make_templates(root: Path) -> TemplateStore:
    """good (serves small), writable, tampered, unpinned, malformed."""
    store = TemplateStore(root)
    init_sim(root, "good", resource_types=["small"], disk_bytes=GIB)
    init_sim(root, "writable", resource_types=["medium"], disk_bytes=GIB)
    os.chmod(root / "writable" / "Disk.img", 0o644)
    init_sim(root, "tampered", resource_types=["medium"], disk_bytes=GIB)
    _rewrite(root / "tampered", "Disk.img", b"not the frozen disk")
    unpinned = init_sim(root, "unpinned", resource_types=["large"], disk_bytes=GIB)
    make_writable(unpinned.path)
    write_metadata(unpinned.path, unpinned.meta.model_copy(update={"ssh_host_key": ""}))
    make_read_only(unpinned.path)
    (root / "malformed").mkdir()
    (root / "malformed" / "TemplateMetadata.json").write_text('{"name": 1}')
    return store


def test_usable_templates_refuse_the_unsafe_ones(tmp_path: Path) -> None:
    usable = UsableTemplates(_make_templates(tmp_path / "templates"), tmp_path / "state" / "cache.json")
    refused = {v.path.name: v.problems for v in usable.verify_all()}
    assert [t.name for t in usable.list()] == ["good"]
    assert sorted(refused) == ["malformed", "tampered", "unpinned", "writable"]
    assert any("Disk.img is writable" in p for p in refused["writable"])
    assert "Disk.img does not match its recorded digest" in refused["tampered"]
    assert any("no pinned SSH host key" in p for p in refused["unpinned"])
    assert any("invalid metadata" in p for p in refused["malformed"])
    assert usable.for_resource_type("small") is not None and usable.for_resource_type("medium") is None
    with pytest.raises(TemplateError, match="'tampered' was refused by the agent: Disk.img does not match"):
        usable.get("tampered")
    with pytest.raises(TemplateError, match="no usable template named 'nope'"):
        usable.get("nope")
    assert usable.refresh() == []  # nothing changed: nothing re-verified, nothing logged again
    # fixed or newly published while the agent runs: picked up without a restart; removed: dropped
    subprocess.run(["chmod", "-R", "a-w", str(tmp_path / "templates" / "writable")], check=True)
    for secret in ("Disk.img", "sim/ssh_host_ed25519_key"):  # as verify's fix says: secrets 0400
        (tmp_path / "templates" / "writable" / secret).chmod(0o400)
    init_sim(tmp_path / "templates", "newer", resource_types=["large"], disk_bytes=GIB)
    make_writable(tmp_path / "templates" / "good")
    shutil.rmtree(tmp_path / "templates" / "good")
    assert usable.refresh() == []
    assert [t.name for t in usable.list()] == ["newer", "writable"]
    assert (tmp_path / "state" / "cache.json").is_file()


def test_per_runner_check_is_cheap_and_catches_changes(tmp_path: Path, hashed: list[str]) -> None:
    init_sim(tmp_path / "templates", "good", disk_bytes=GIB)
    usable = UsableTemplates(TemplateStore(tmp_path / "templates"))
    usable.verify_all()
    t = usable.get("good")
    hashed.clear()
    t.check()
    assert "Disk.img" not in hashed and hashed, "big files by stat, small files re-hashed"
    os.chmod(t.path / "README.md", 0o644)
    with pytest.raises(TemplateError, match="README.md is writable"):
        t.check()
    os.chmod(t.path / "README.md", 0o444)
    # a new version published under the same name after the agent started
    _rewrite(t.path, "Disk.img", b"\0" * (2 << 20))
    with pytest.raises(TemplateError, match="Disk.img changed since the agent verified it.*restart the agent"):
        t.check()


def _settings(root: Path) -> Any:
    return agent_settings(root, 1, allow_copy=True)  # no server needed: start() stops before syncing


async def test_agent_refuses_to_start_without_a_usable_template(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    init_sim(root, "only", disk_bytes=GIB)
    _rewrite(root / "only", "HardwareModel.json", b"{}")
    with pytest.raises(ConfigError, match=r"no usable template in .*only: HardwareModel.json does not match.*"
                                          r"template verify NAME"):
        await Agent(_settings(tmp_path)).start()
    with pytest.raises(ConfigError, match="no usable template"):
        (tmp_path / "empty").mkdir()
        await Agent(_settings(tmp_path / "empty")).start()


async def test_agent_reports_and_uses_only_verified_templates(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    _make_templates(tmp_path / "templates")
    agent = Agent(_settings(tmp_path))
    caplog.set_level(logging.ERROR)
    await agent.start()
    try:
        assert [t.name for t in agent.sync._register_request().templates] == ["good"]
        refusals = [r.getMessage() for r in caplog.records if "refusing template" in r.getMessage()]
        assert len(refusals) == 4 and all("fix:" in m for m in refusals)
        agent.handle_create("req-1", "r1", "job-1", "true", "medium", "", [])
        ack = agent.take_acks()[-1]
        assert not ack.ok and "no template serves resource type 'medium'" in ack.error
        agent.handle_create("req-2", "r2", "job-2", "true", "", "tampered", [])
        ack = agent.take_acks()[-1]
        assert not ack.ok and "was refused by the agent" in ack.error
        assert (tmp_path / "agent" / "template-digests.json").is_file()
    finally:
        await agent.stop(tear_down=True)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        dig = digest_mod.file_digest(p) if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, dig)
    return out


async def test_a_runner_lifecycle_never_writes_into_its_template(sim_stack: SimStack) -> None:
    template = sim_stack.template
    before = await asyncio.to_thread(_snapshot, template.path)
    async with sim_stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        reply = await sim_stack.add(stub, "no-write-1", resource_type="small")
        runner = sim_stack.agent.runners[reply.cloud_id.removeprefix("shoes-vz-")]
        assert runner.phase == Phase.RUNNING
        # the runner really used the template's files (clones), and wrote into its own copies
        with open(runner.bundle.disk, "r+b") as f:
            f.write(b"guest writes land in the bundle")
        await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id=reply.cloud_id),
                                  metadata=sim_stack.metadata, timeout=10)
        await eventually(lambda: not runner.bundle.path.exists(), timeout=20)
    after = await asyncio.to_thread(_snapshot, template.path)
    assert after == before
    assert verify(template.path).ok
    key = asyncssh.import_public_key(template.meta.ssh_host_key)
    assert key.get_algorithm() == "ssh-ed25519"
