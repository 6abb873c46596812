"""SQLite store on disk and the scheduler's reservations."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from shoes_vz.core.errors import CapacityExhausted, InvalidInput
from shoes_vz.server.scheduler import NoAgents, Scheduler
from shoes_vz.server.store import Command, HeldTemplate, Store

SMALL = [HeldTemplate("t-small", resource_types=("small", "medium"))]


async def open_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "db" / "server.db")
    await store.aopen()
    return store


async def add_agent(store: Store, agent_id: str, slots: int = 2, online: bool = True,
                    templates: list[HeldTemplate] = SMALL) -> None:
    await store.call(store.upsert_agent, agent_id, agent_id + ".local", slots, templates, {})
    await store.call(store.set_agent_online, agent_id, online)


async def test_store_persists_in_wal_mode(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1")
    sched = Scheduler(store)
    row, cmd = await sched.reserve("job-1", "small", "echo hi", ["macOS"])
    assert cmd.kind == "create" and cmd.payload["template"] == "t-small"
    assert [c.request_id for c in await store.call(store.pending_commands, "a1")] == [cmd.request_id]
    await store.call(store.mark_sent, [cmd.request_id])
    assert await store.call(store.pending_commands, "a1", time.time() - 60) == []
    acked = await store.call(store.ack, cmd.request_id, "a1", True, "")
    assert acked is not None and acked.runner_id == row.runner_id
    assert await store.call(store.ack, cmd.request_id, "a1", True, "") is None  # acks are idempotent
    assert await store.call(store.create_acked, row.runner_id)
    await store.aclose()

    with sqlite3.connect(tmp_path / "db" / "server.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store = await open_store(tmp_path)  # reopened: nothing lost
    again = await store.call(store.live_runner_by_name, "job-1")
    assert again is not None and again.runner_id == row.runner_id and again.labels == ["macOS"]
    await store.call(store.mark_gone, row.runner_id)
    assert await store.call(store.live_runner_by_name, "job-1") is None
    assert (await store.call(store.runner, row.runner_id)).deleted_at is not None
    await store.aclose()


async def test_delete_intent_is_durable_before_sending(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", online=False)
    await store.call(store.set_agent_online, "a1", True)
    row, _ = await Scheduler(store).reserve("job", "small", "echo secret-in-the-script", [])
    await store.call(store.set_agent_online, "a1", False)
    cmd = Command("del-1", "a1", row.runner_id, "delete", {})
    await store.call(store.request_delete, row.runner_id, cmd)
    # the create never reached the agent: the delete cancels it (never sent, its script dropped)
    kinds = [c.kind for c in await store.call(store.pending_commands, "a1")]
    assert kinds == ["delete"]
    payloads = [r[0] for r in store.db.execute("SELECT payload FROM outbox WHERE kind='create'")]
    assert len(payloads) == 1 and "secret-in-the-script" not in payloads[0]
    await store.aclose()


async def test_fifty_concurrent_reservations_never_overcommit(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", slots=2)
    await add_agent(store, "a2", slots=2)
    await add_agent(store, "a3", slots=3, online=False)  # offline: gets nothing
    sched = Scheduler(store)
    results = await asyncio.gather(*(sched.reserve(f"job-{i}", "small", "", []) for i in range(50)),
                                   return_exceptions=True)
    placed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, CapacityExhausted)]
    assert len(placed) == 4 and len(refused) == 46
    per_agent: dict[str, int] = {}
    for row, _ in placed:
        per_agent[row.agent_id] = per_agent.get(row.agent_id, 0) + 1
    assert per_agent == {"a1": 2, "a2": 2}
    await store.aclose()


async def test_least_loaded_first(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1", slots=2)
    await add_agent(store, "a2", slots=2)
    sched = Scheduler(store)
    first, _ = await sched.reserve("j1", "small", "", [])
    second, _ = await sched.reserve("j2", "small", "", [])
    assert {first.agent_id, second.agent_id} == {"a1", "a2"}
    await store.aclose()


async def test_resource_types(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    sched = Scheduler(store)
    with pytest.raises(NoAgents):
        await sched.reserve("j", "small", "", [])
    await add_agent(store, "a1")
    with pytest.raises(InvalidInput, match="xlarge"):
        await sched.reserve("j", "xlarge", "", [])
    row, _ = await sched.reserve("j", "medium", "", [])
    assert row.template == "t-small"
    assert await store.call(store.live_runners) == [row] or len(await store.call(store.live_runners)) == 1
    await store.aclose()


async def test_capacity_error_blocks_agent(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1")
    await store.call(store.block_agent, "a1", time.time() + 60)
    with pytest.raises(CapacityExhausted):
        await Scheduler(store).reserve("j", "small", "", [])
    await store.aclose()


async def test_stale_agents_go_offline(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await add_agent(store, "a1")
    assert await store.call(store.mark_stale_agents_offline, time.time() - 60) == []
    assert await store.call(store.mark_stale_agents_offline, time.time() + 1) == ["a1"]
    assert not (await store.call(store.agents))[0].online
    await store.aclose()


async def test_a_database_with_the_old_stored_reap_reason_still_reads(tmp_path: Path) -> None:
    """Servers of an earlier version stored the reap reason in a column of its own; it is read from the error now."""
    store = await open_store(tmp_path)
    await add_agent(store, "a1")
    row, _ = await Scheduler(store).reserve("job-old", "small", "true", [])
    await store.call(store.db.execute, "ALTER TABLE runners ADD COLUMN reap_reason TEXT NOT NULL DEFAULT ''")
    assert await store.call(store.reap_runner, row.runner_id, "reaped (agent_gone): agent a1 gone 3600s")
    again = await store.call(store.runner, row.runner_id)
    assert again is not None and again.reap_reason == "agent_gone" and again.deleted_at is not None
    await store.aclose()
