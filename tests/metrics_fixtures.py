"""A sim stack that has done some work (`do_work`), for the metrics and Prometheus tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from stack_fixtures import SimStack, eventually, make_stack, require

from shoes_vz.core.states import GuestState
from shoes_vz.demo import FAKE_RUNNER_SCRIPT
from shoes_vz.wire import shoes_pb2 as spb
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

# the imitation runner of demo.py, which then takes a job and finishes it, as the actions runner logs it
JOB_SCRIPT = FAKE_RUNNER_SCRIPT.replace("wait\n", """sleep 0.5
echo "[$(date -u '+%Y-%m-%d %H:%M:%SZ') INFO JobDispatcher] Running job: build" >> "$log"
sleep 1.5
echo "[$(date -u '+%Y-%m-%d %H:%M:%SZ') INFO JobDispatcher] Job build completed with result: Succeeded" >> "$log"
wait
""")
assert JOB_SCRIPT != FAKE_RUNNER_SCRIPT


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (apt-get install prometheus)")
    assert path is not None
    return path


async def do_work(stack: SimStack) -> None:
    """One runner runs a job to its end, one waits idle, a third finds no slot, myshoes' usual
    refusals happen (a bad name, a delete of a runner that is gone)."""
    async with stack.channel() as ch:
        stub = sgrpc.ShoesServiceStub(ch)
        await stack.add(stub, "job-done", JOB_SCRIPT.replace("__NAME__", "job-done"))
        await stack.add(stub, "job-idle", FAKE_RUNNER_SCRIPT.replace("__NAME__", "job-idle"))
        for name, code in (("job-waits", grpc.StatusCode.RESOURCE_EXHAUSTED),
                           ("bad name with spaces", grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stack.add(stub, name)
            assert refused.value.code() == code, name
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.DeleteInstance(spb.DeleteInstanceRequest(cloud_id="shoes-vz-nosuchrunner"),
                                      metadata=stack.metadata, timeout=10)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    runners = {r.spec.runner_name: r for r in stack.agent.runners.values()}
    await eventually(lambda: runners["job-done"].guest_state == GuestState.FINISHED
                     and runners["job-idle"].guest_state == GuestState.IDLE, timeout=30)
    store = stack.server.store

    async def server_sees() -> bool:
        rows = {r.runner_name: r for r in await store.call(store.live_runners)}
        return rows["job-done"].guest_state == "finished" and rows["job-idle"].guest_state == "idle"

    await eventually(server_sees, timeout=15)


@asynccontextmanager
async def worked_stack(root: Path) -> AsyncIterator[SimStack]:
    async with make_stack(root, max_runners=2) as stack:
        await do_work(stack)
        yield stack


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def value(text: str, series: str) -> float:
    """The sample of `series` (name{labels} exactly as exposed) in an exposition text."""
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m is not None, f"{series} not in the exposition"
    return float(m.group(1))


def check_metrics(text: str) -> list[str]:
    """promtool check metrics' complaints (exit 1 when there are any)."""
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert (p.returncode == 0) == (not lines), (p.returncode, lines)
    return lines
