"""The fleet commands against a real server and two real sim agents (issue 14 item 1): `shoes-vz agents`
and `runners` show what the store holds; `drain` keeps new runners off a host while its running job goes
on, across restarts of the server and of the agent; `delete` is as durable as myshoes' DeleteInstance."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from fleet_fixtures import VIEWER, two_agent_fleet
from stack_fixtures import eventually, one_error_line

from shoes_vz.core import ids
from shoes_vz.stack import free_port

OUT = Path(__file__).resolve().parents[1] / "build" / "fleet"  # the CLI's tables from this run, for the report


async def test_drain_keeps_new_runners_off_a_host_across_restarts_and_delete_is_durable(tmp_path: Path) -> None:
    async with two_agent_fleet(tmp_path) as fleet:
        a, b = sorted(fleet.agents, key=lambda x: x.agent_id)  # the scheduler breaks ties by agent id: a first
        first = await fleet.add("job-on-a")
        r1 = ids.runner_id_from_cloud_id(first.cloud_id)
        assert r1 in a.runners

        done = await fleet.cli("drain", a.agent_id)
        assert done.returncode == 0, done.stderr
        assert f"agent {a.agent_id}" in done.stdout and "drained" in done.stdout and "1 running" in done.stdout
        for name in ("job-b1", "job-b2"):  # every new runner goes to b
            reply = await fleet.add(name)
            assert ids.runner_id_from_cloud_id(reply.cloud_id) in b.runners
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fleet.add("job-nowhere", timeout=20)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{a.agent_id} (drained: drained by an operator" in (refused.value.details() or "")
        assert a.runners[r1].phase.value == "running"  # the running job goes on

        await fleet.restart_server()  # the drain is the server's: it outlives it ...
        await a.stop(tear_down=False)
        a = await fleet.start_agent(fleet.agents.index(a))  # ... and the agent's restart (its VM adopted)
        shown = json.loads((await fleet.cli("agents", "--json", token=VIEWER)).stdout)
        drained = {x["agent_id"]: x["drained"] for x in shown}
        assert drained == {a.agent_id: True, b.agent_id: False}
        [cond] = [x for x in shown if x["agent_id"] == a.agent_id][0]["conditions"]
        assert cond["reason"] == "drained"
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await fleet.add("job-nowhere-2", timeout=20)
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "drained" in (again.value.details() or "")

        # an operator's delete while the agent is away: carried out when it returns
        index = fleet.agents.index(a)
        await a.stop(tear_down=False)
        deleted = await fleet.cli("delete", "job-on-a")
        assert deleted.returncode == 0, deleted.stderr
        assert f"runner {r1} (job-on-a) on agent {a.agent_id}: delete requested" in deleted.stdout
        row = await fleet.server.store.call(fleet.server.store.runner, r1)
        assert row is not None and row.delete_requested and row.deleted_at is None
        assert await fleet.delete_instance(first.cloud_id) == grpc.StatusCode.NOT_FOUND  # myshoes: done
        a = await fleet.start_agent(index)
        await eventually(lambda: r1 not in a.runners, timeout=30)
        await eventually(lambda: fleet.server.store.call(fleet.server.store.runner, r1), timeout=5)
        gone = await fleet.server.store.call(fleet.server.store.runner, r1)
        await eventually(lambda: _gone(fleet, r1), timeout=30)
        assert gone is not None
        again_deleted = await fleet.cli("delete", r1)
        assert again_deleted.returncode == 1 and "no live runner" in one_error_line(again_deleted.stderr)

        undone = await fleet.cli("undrain", a.agent_id)
        assert undone.returncode == 0 and "undrained: placements resume" in undone.stdout, undone
        reply = await fleet.add("job-on-a-again")
        assert ids.runner_id_from_cloud_id(reply.cloud_id) in a.runners


async def _gone(fleet: object, runner_id: str) -> bool:
    store = fleet.server.store  # type: ignore[attr-defined]
    row = await store.call(store.runner, runner_id)
    return row is not None and row.deleted_at is not None


async def test_agents_and_runners_show_the_fleet(tmp_path: Path) -> None:
    """The tables and --json of a two-agent fleet with runners in several states (saved for the report)."""
    async with two_agent_fleet(tmp_path) as fleet:
        a, b = sorted(fleet.agents, key=lambda x: x.agent_id)
        names = ["job-1", "job-2", "job-3"]
        replies = [await fleet.add(n) for n in names]
        assert (await fleet.cli("drain", b.agent_id)).returncode == 0
        assert (await fleet.cli("delete", "job-3")).returncode == 0
        tables = {"agents": await fleet.cli("agents", token=VIEWER),
                  "runners": await fleet.cli("runners", "--all", token=VIEWER)}  # job-3 may be gone already
        for done in tables.values():
            assert done.returncode == 0, done.stderr
        OUT.mkdir(parents=True, exist_ok=True)
        for cmd, done in tables.items():
            (OUT / f"{cmd}.txt").write_text(done.stdout)
        assert a.agent_id in tables["agents"].stdout and "drained" in tables["agents"].stdout
        assert "2 agents, 2 online" in tables["agents"].stdout
        for n in names:
            assert n in tables["runners"].stdout

        listed = json.loads((await fleet.cli("runners", "--json", token=VIEWER)).stdout)
        by_name = {r["runner_name"]: r for r in listed}
        assert set(by_name) == set(names) or set(by_name) == set(names[:2])  # job-3 may be gone already
        for n, reply in zip(names[:2], replies[:2], strict=True):
            r = by_name[n]
            assert r["cloud_id"] == reply.cloud_id and r["state"] == "running" and r["ip_address"] == reply.ip_address
            assert r["template"] == "sim-test" and r["resource_type"] == "small" and r["timings"]["total_seconds"] > 0
            assert r["agent_id"] in (a.agent_id, b.agent_id) and r["guest_state"]
        agents = {x["agent_id"]: x for x in json.loads((await fleet.cli("agents", "--json")).stdout)}
        for agent in (a, b):
            x = agents[agent.agent_id]
            assert x["online"] and x["driver"] == "sim" and x["agent_version"] and x["max_runners"] == 2
            assert x["templates"][0]["name"] == "sim-test" and x["templates"][0]["digest"]
            assert x["running_runners"] == sum(1 for r in listed if r["agent_id"] == agent.agent_id)

        viewer_drain = await fleet.cli("drain", a.agent_id, token=VIEWER)  # a wrong role: one line
        line = one_error_line(viewer_drain.stderr)
        assert viewer_drain.returncode == 1 and "'viewer' may not call this (operator only)" in line
        assert "SHOESVZ_ADMIN_TOKEN" in line
        nobody = await fleet.cli("runners", token=None)
        assert nobody.returncode == 1 and "refused the credentials" in one_error_line(nobody.stderr)
        away = await fleet.cli("agents", server=f"127.0.0.1:{free_port()}")
        assert away.returncode == 1 and "cannot reach the server at" in one_error_line(away.stderr)
