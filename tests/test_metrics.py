"""Both /metrics endpoints after real work: upstream's meanings are there with the values the work
implies, the server (fleet, `shoesvz_…`) and an agent (`shoesvz_agent_…`) never share a name, and
`promtool check metrics` passes on both but for DESIGN §10's two gauges named like counters."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import grpc
import pytest
from metrics_fixtures import check_metrics, scrape, value, worked_stack
from stack_fixtures import make_stack
from test_evidence import BROKEN_SSHD

from shoes_vz.server.metrics import FAILURE_REASONS
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

# DESIGN §10 names them and upstream's dashboards use them: gauges that end in _total. Nothing else.
DESIGN_EXCEPTIONS = {
    'shoesvz_agents_total non-counter metrics should not have "_total" suffix',
    'shoesvz_runners_total non-counter metrics should not have "_total" suffix',
}
DESIGN_NAMES = {"shoesvz_agents_online", "shoesvz_agents_total", "shoesvz_runners_total",
                "shoesvz_capacity_total_runners", "shoesvz_runner_startup_duration_seconds"}


def names(text: str) -> set[str]:
    return {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}


async def test_metrics_follow_conventions_and_cover_the_job(tmp_path: Path) -> None:
    async with worked_stack(tmp_path) as stack:
        server = await scrape(stack.server.metrics_port)
        agent = await scrape(stack.agent.metrics_port)
        agent_id = stack.agent.agent_id
        host = next(a for a in await stack.server.store.call(stack.server.store.agents)).hostname

    assert set(check_metrics(server)) == DESIGN_EXCEPTIONS
    assert check_metrics(agent) == []
    # one name space each: scraping both never counts a runner twice
    assert DESIGN_NAMES <= names(server)
    assert not names(server) & names(agent)
    assert all(n.startswith("shoesvz_agent_") for n in names(agent))
    assert not any(n.startswith("shoesvz_agent_") for n in names(server))

    # upstream's meanings, on the server, with the values the work implies
    assert value(server, 'shoesvz_runners_total{state="running"}') == 2
    assert value(server, "shoesvz_runners_idle") == 1       # job-idle waits for a job
    assert value(server, "shoesvz_runners_busy") == 0       # job-done's job finished
    assert value(server, "shoesvz_runner_job_duration_seconds_count") == 1
    assert 1.0 <= value(server, "shoesvz_runner_job_duration_seconds_sum") < 30  # the script's job takes 1.5 s
    per_agent = f'{{agent_id="{agent_id}",hostname="{host}"}}'
    assert value(server, f"shoesvz_agents_capacity_runners{per_agent}") == 2
    assert value(server, f"shoesvz_agents_current_runners{per_agent}") == 2
    assert value(server, "shoesvz_capacity_available_runners") == 0
    assert value(server, "shoesvz_capacity_utilization_ratio") == 1
    assert value(server, 'shoesvz_add_instance_requests_total{code="OK"}') == 2
    assert value(server, 'shoesvz_add_instance_requests_total{code="INVALID_ARGUMENT"}') == 1
    assert value(server, 'shoesvz_add_instance_requests_total{code="RESOURCE_EXHAUSTED"}') == 1
    assert value(server, 'shoesvz_delete_instance_requests_total{code="NOT_FOUND"}') == 1
    assert value(server, 'shoesvz_add_instance_duration_seconds_count{code="OK"}') == 2
    assert value(server, 'shoesvz_delete_instance_duration_seconds_count{code="NOT_FOUND"}') == 1
    assert value(server, 'shoesvz_runner_failures_total{reason="refused"}') == 0  # shown before the first
    assert value(server, 'shoesvz_runners_reaped_total{reason="agent_gone"}') == 0
    assert value(server, "shoesvz_agents_drained") == 0
    assert value(server, 'shoesvz_runner_startup_duration_seconds_count{phase="boot_to_ssh"}') == 2

    # the host's own view
    assert value(agent, f'shoesvz_agent_info{{agent_id="{agent_id}",driver="sim",version="0.1.0"}}') == 1
    assert value(agent, 'shoesvz_agent_runners{state="running"}') == 2
    assert value(agent, 'shoesvz_agent_guest_runners{state="idle"}') == 1
    assert value(agent, 'shoesvz_agent_guest_runners{state="finished"}') == 1
    assert value(agent, "shoesvz_agent_capacity_runners") == 2
    for phase in ("clone", "boot_to_ssh", "total"):
        labels = f'{{phase="{phase}",start="cold",template="sim-test"}}'
        assert value(agent, f"shoesvz_agent_runner_startup_duration_seconds_count{labels}") == 2
    assert value(agent, 'shoesvz_agent_runner_job_duration_seconds_count{template="sim-test"}') == 1
    assert value(agent, 'shoesvz_agent_warm_slots{state="total",template="sim-test"}') == 0
    assert value(agent, 'shoesvz_agent_runner_failures_total{phase="booting"}') == 0
    assert value(agent, 'shoesvz_agent_runners_reaped_total{reason="vm_died"}') == 0
    free, size = (value(agent, f"shoesvz_agent_runners_volume_{k}_bytes") for k in ("free", "size"))
    assert 0 < free <= size
    assert value(agent, "shoesvz_agent_dhcp_leases_active") == 2  # both guests hold a lease
    assert value(agent, "shoesvz_agent_dhcp_pool_addresses") >= 2


async def test_a_failed_runner_is_counted_by_the_phase_it_failed_in(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest's sshd cannot start (as in test_evidence): the runner fails while booting, and both
    endpoints say so once; AddInstance's UNAVAILABLE is counted by its code."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sshd").write_text(BROKEN_SSHD)
    (fake / "sshd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    # loopback guests run the sshd on the agent's PATH, as a user of this host
    async with make_stack(tmp_path / "stack", template_kw={"ssh_user": getpass.getuser()},
                          driver_options={"mode": "loopback"}) as stack:
        async with stack.channel() as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stack.add(sgrpc.ShoesServiceStub(ch), "no-sshd", timeout=90)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        server = await scrape(stack.server.metrics_port)
        agent = await scrape(stack.agent.metrics_port)
    assert value(server, 'shoesvz_runner_failures_total{reason="failed_booting"}') == 1
    assert sum(value(server, f'shoesvz_runner_failures_total{{reason="{r}"}}') for r in FAILURE_REASONS) == 1
    assert value(server, 'shoesvz_add_instance_requests_total{code="UNAVAILABLE"}') == 1
    assert value(agent, 'shoesvz_agent_runner_failures_total{phase="booting"}') == 1
    assert value(agent, 'shoesvz_agent_runner_failures_total{phase="creating"}') == 0


def test_host_readings_say_unknown_not_full(tmp_path: Path) -> None:
    """A runners directory that is gone reads NaN (no "volume full" alert from a 0); a lease file
    bootpd has not made yet is no leases; a malformed one is unknown."""
    import math

    from shoes_vz.agent.metrics import read_host

    gone = read_host(tmp_path / "no-such-dir", tmp_path / "no-leases")
    assert math.isnan(gone.free_bytes) and math.isnan(gone.size_bytes)
    assert gone.active_leases == 0
    (tmp_path / "leases").write_text("{\n\tname=x\n")
    assert math.isnan(read_host(tmp_path, tmp_path / "leases").active_leases)
    assert read_host(tmp_path, tmp_path / "no-leases").free_bytes > 0
