"""Placement: online agents with a free slot whose templates serve the resource type, least
loaded first. A placement is a reservation — the runner row is written under the scheduler's lock
— so concurrent AddInstance calls never over-commit a host."""

from __future__ import annotations

import asyncio
import secrets
import time

from shoes_vz.core.errors import CapacityExhausted, InvalidInput, ShoesVzError
from shoes_vz.core.ids import new_runner_id
from shoes_vz.core.states import Phase
from shoes_vz.server.store import AgentRow, Command, RunnerRow, Store


class NoAgents(ShoesVzError):
    """No agent has registered yet: the server cannot judge the request (UNAVAILABLE)."""


def template_for(agent: AgentRow, resource_type: str) -> str | None:
    for t in agent.templates:
        if resource_type in t.get("resource_types", []):
            return str(t["name"])
    return None


def new_request_id() -> str:
    return secrets.token_hex(8)


class Scheduler:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = asyncio.Lock()

    async def reserve(self, runner_name: str, resource_type: str, setup_script: str,
                      labels: list[str]) -> tuple[RunnerRow, Command]:
        async with self._lock:
            return await self.store.call(self._reserve, runner_name, resource_type, setup_script, labels)

    def _reserve(self, runner_name: str, resource_type: str, setup_script: str,
                 labels: list[str]) -> tuple[RunnerRow, Command]:
        agents = self.store.agents()
        if not agents:
            raise NoAgents("no agent has registered with this server yet")
        serving = [a for a in agents if template_for(a, resource_type)]
        if not serving:
            raise InvalidInput(f"no template on any agent serves resource_type {resource_type!r}")
        now = time.time()
        load: dict[str, int] = {}
        for r in self.store.live_runners():
            load[r.agent_id] = load.get(r.agent_id, 0) + 1
        free = [a for a in serving
                if a.online and a.blocked_until <= now and load.get(a.agent_id, 0) < a.max_runners]
        if not free:
            online = sum(1 for a in serving if a.online)
            raise CapacityExhausted(
                f"no free capacity for {resource_type}: {online} of {len(serving)} serving agents online, "
                "all slots taken"
            )
        agent = min(free, key=lambda a: (load.get(a.agent_id, 0) / a.max_runners, a.agent_id))
        template = template_for(agent, resource_type) or ""
        runner = RunnerRow(
            runner_id=new_runner_id(), runner_name=runner_name, agent_id=agent.agent_id,
            state=Phase.CREATING.value, resource_type=resource_type, template=template, labels=labels,
            created_at=now, updated_at=now,
        )
        cmd = Command(new_request_id(), agent.agent_id, runner.runner_id, "create", {
            "runner_name": runner_name, "setup_script": setup_script, "resource_type": resource_type,
            "template": template, "labels": labels,
        })
        self.store.insert_runner_with_command(runner, cmd)
        return runner, cmd
