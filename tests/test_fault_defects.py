"""The three defects fault injection found (issue 12), each reproduced on real parts:

1. what a guest started outlives its VM when the VM process dies (SIGKILL), on the loopback sim —
   with the agent running, and across an agent restart (the stale-bundle sweep); the namespaced sim
   (PID namespace) is checked the same way;
2. after a server crash every agent is still online in the database, so runners are placed on
   agents that are not connected;
3. the per-name lock of AddInstance is dropped while a woken waiter has not taken it yet, so a third
   caller runs beside the second and one runner name gets two runners.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from stack_fixtures import (
    ENROLLMENT_TOKEN,
    TOKEN,
    SimStack,
    eventually,
    server_settings,
)
from test_server_grpc import MD, ScriptedAgent

from shoes_vz.agent.app import Agent
from shoes_vz.server.app import ServerApp
from shoes_vz.server.shoes_service import ShoesService
from shoes_vz.server.store import RunnerRow, Store
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


def _pids_with(needle: bytes) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if needle in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                continue
    return found


def _live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _runner_with_a_sleeper(stack: SimStack, name: str) -> tuple[str, bytes]:
    """A runner whose setup_script leaves a long `sleep` (cwd in the guest's home) and a shell waiting on
    it, as a job does; the sleep's unique argument finds it from the host."""
    marker = f"3600.{secrets.randbelow(10**6):06d}"
    async with stack.channel() as ch:
        reply = await stack.add(sgrpc.ShoesServiceStub(ch), name, f"sleep {marker}\n")
    runner_id = reply.cloud_id.removeprefix("shoes-vz-")
    needle = f"sleep\0{marker}".encode()
    await eventually(lambda: _pids_with(needle), timeout=10)
    return runner_id, needle


async def test_a_guests_processes_die_with_its_killed_vm_process(any_sim_stack: SimStack) -> None:
    runner_id, needle = await _runner_with_a_sleeper(any_sim_stack, "doomed-job")
    runner = any_sim_stack.agent.runners[runner_id]
    pid = runner.bundle.lock_holder()
    assert pid and pid > 0
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: runner.gone.is_set(), timeout=30)
    assert not runner.bundle.path.exists()
    left = await eventually(lambda: not [p for p in _pids_with(needle) if _live(p)] or None, timeout=10)
    assert left, f"the guest's sleep outlived its VM: {[p for p in _pids_with(needle) if _live(p)]}"


async def test_a_guests_processes_die_when_its_vm_died_while_the_agent_was_down(any_sim_stack: SimStack) -> None:
    runner_id, needle = await _runner_with_a_sleeper(any_sim_stack, "orphaned-job")
    bundle = any_sim_stack.agent.runners[runner_id].bundle
    pid = bundle.lock_holder()
    assert pid and pid > 0
    await any_sim_stack.agent.stop(tear_down=False)  # the agent goes; its VM stays ...
    os.kill(pid, signal.SIGKILL)  # ... and dies while nobody watches
    await eventually(lambda: not bundle.is_running(), timeout=10)
    restarted = Agent(any_sim_stack.agent.settings.model_copy(update={"notify_url": ""}))
    await restarted.start()  # sweeps the dead bundle
    try:
        assert runner_id not in restarted.runners and not bundle.path.exists()
        left = await eventually(lambda: not [p for p in _pids_with(needle) if _live(p)] or None, timeout=10)
        assert left, f"the guest's sleep outlived its VM: {[p for p in _pids_with(needle) if _live(p)]}"
    finally:
        await restarted.stop(tear_down=True)
        any_sim_stack.agent = restarted


def _server_process(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`shoes-vz server` as its own process (a crash is a SIGKILL to it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = root / "server.toml"
    cfg.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = ""\ndb_path = "{root / "server.db"}"\n'
                   f'shoes_token = "{TOKEN}"\nenrollment_token = "{ENROLLMENT_TOKEN}"\nsync_interval = 1.0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOESVZ_")}
    proc = subprocess.Popen([sys.executable, "-m", "shoes_vz.cli.main", "server", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return proc, port


async def test_after_a_server_crash_no_agent_is_online_until_it_connects(tmp_path: Path) -> None:
    proc, port = _server_process(tmp_path)
    try:
        agent = ScriptedAgent(f"127.0.0.1:{port}", agent_id="agent-crash")
        for _ in range(100):
            try:
                await agent.connect()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        store = Store(tmp_path / "server.db")
        store.open()
        await eventually(lambda: [a.online for a in store.agents()] == [True], timeout=10)
        store.close()
        proc.kill()  # a crash: nothing marks the agent offline
        proc.wait(10)
        await agent.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    async with ServerApp(server_settings(tmp_path)) as app:
        agents = await app.store.call(app.store.agents)
        assert [a.online for a in agents] == [False], "an agent that has not connected is online"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await sgrpc.ShoesServiceStub(ch).AddInstance(spb.AddInstanceRequest(runner_name="early"),
                                                             metadata=MD, timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
        assert "0 of 1 agents holding it online" in (e.value.details() or "")
        assert await app.store.call(app.store.live_runners) == []  # nothing placed on the absent agent
        agent.addr = f"127.0.0.1:{app.port}"  # it connects, with the credential it enrolled for: online again
        agent.outgoing = asyncio.Queue()  # (the closed stream's queue ends with its sentinel)
        await agent.connect()
        await eventually(lambda: "agent-crash" in app.hub.connections)
        assert [a.online for a in await app.store.call(app.store.agents)] == [True]
        await agent.close()


async def test_one_runner_name_is_decided_by_one_call_at_a_time_under_any_interleaving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_add` decides for a name (look it up, replace a failed runner, place a new one): two callers in
    it at once for one name can place two runners. A holds the name, B waits for it; A ends — the lock
    is released and B woken, but B has not run yet — and C comes: C must wait for B, not get a lock of
    its own and run beside B."""
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    gates: list[asyncio.Event] = []

    async def probe(self: ShoesService, request: spb.AddInstanceRequest, *_: object) -> RunnerRow:
        name = request.runner_name
        inside[name] = inside.get(name, 0) + 1
        most[name] = max(most.get(name, 0), inside[name])
        gate = asyncio.Event()
        gates.append(gate)
        try:
            await gate.wait()
        finally:
            inside[name] -= 1
        return RunnerRow(runner_id=f"{len(gates):016x}", runner_name=name, agent_id="a", state="running",
                         resource_type="small", template="t")

    monkeypatch.setattr(ShoesService, "_add", probe)
    async with ServerApp(server_settings(tmp_path)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = sgrpc.ShoesServiceStub(ch)

            def add() -> asyncio.Future[spb.AddInstanceResponse]:
                return asyncio.ensure_future(stub.AddInstance(spb.AddInstanceRequest(runner_name="one-job"),
                                                              metadata=MD, timeout=20))

            a = add()
            await eventually(lambda: len(gates) == 1)
            b = add()
            await asyncio.sleep(0.3)  # B is waiting for the name
            assert len(gates) == 1
            gates[0].set()
            await a  # A is done; B has been woken
            c = add()
            await asyncio.sleep(0.5)  # on main: C is in beside B by now
            while not (b.done() and c.done()):
                for gate in gates:
                    gate.set()
                await asyncio.sleep(0.05)
            await asyncio.gather(b, c)
    assert most["one-job"] == 1, f"{most['one-job']} calls decided for one runner name at once"
