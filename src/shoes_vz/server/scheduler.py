"""Placement: which agent and template get a runner (DESIGN §3.1, §8, §12).

A resource type is served by the template the server's `resource_types` mapping names (type →
template name → the agents holding that template); with no mapping configured, by any template
whose own metadata lists the type. Among online agents with a free runner slot, one with a free
warm slot for the template wins, then the least loaded. A placement is a reservation — the runner
row is written under the scheduler's lock — so concurrent AddInstance calls never over-commit a host.

A host reporting a condition (core/conditions.py: a clone failure, a full disk, …) gets nothing
until it clears; callers meanwhile get RESOURCE_EXHAUSTED naming it, which myshoes retries. An
operator's drain (`shoes-vz drain`, stored server-side) is one more such condition.

A type no template can serve is InvalidInput (INVALID_ARGUMENT: myshoes drops the job for good), so
it is raised only when that is certain: the type is not in the mapping, or no registered agent,
online or not, holds a template for it. Everything else is capacity, which myshoes retries.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping

from shoes_vz.core.errors import CapacityExhausted, InvalidInput, ShoesVzError
from shoes_vz.core.ids import new_runner_id
from shoes_vz.core.resources import RESOURCE_TYPES
from shoes_vz.core.states import Phase
from shoes_vz.server.store import AgentRow, Command, HeldTemplate, RunnerRow, Store


class NoAgents(ShoesVzError):
    """No agent has registered yet: the server cannot judge the request (UNAVAILABLE)."""


def new_request_id() -> str:
    return secrets.token_hex(8)


def describe_mapping(mapping: Mapping[str, str]) -> str:
    """`small → macos-15, large → macos-15-big` in myshoes' order of sizes."""
    return ", ".join(f"{t} → {mapping[t]}" for t in RESOURCE_TYPES if t in mapping) or "(empty)"


class Scheduler:
    def __init__(self, store: Store, resource_types: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.mapping = dict(resource_types or {})
        self._lock = asyncio.Lock()
        # warm slots handed out since each agent last reported its templates, so a burst of
        # placements does not count one free slot twice
        self._warm_claims: dict[tuple[str, str], int] = {}

    def template_for(self, agent: AgentRow, resource_type: str) -> HeldTemplate | None:
        if self.mapping:
            name = self.mapping.get(resource_type)
            return next((t for t in agent.templates if t.name == name), None) if name else None
        return next((t for t in agent.templates if resource_type in t.resource_types), None)

    def templates_reported(self, agent_id: str) -> None:
        """The agent's warm-slot counts are fresh again."""
        for key in [k for k in self._warm_claims if k[0] == agent_id]:
            del self._warm_claims[key]

    async def reserve(self, runner_name: str, resource_type: str, setup_script: str,
                      labels: list[str]) -> tuple[RunnerRow, Command]:
        async with self._lock:
            claims = dict(self._warm_claims)
            runner, cmd, warm = await self.store.call(self._reserve, runner_name, resource_type, setup_script,
                                                      labels, claims)
            if warm:
                key = (runner.agent_id, runner.template)
                self._warm_claims[key] = self._warm_claims.get(key, 0) + 1
            return runner, cmd

    def _reserve(self, runner_name: str, resource_type: str, setup_script: str, labels: list[str],
                 claims: dict[tuple[str, str], int]) -> tuple[RunnerRow, Command, bool]:
        agents = self.store.agents()
        if not agents:
            raise NoAgents("no agent has registered with this server yet")
        serving = [(a, t) for a in agents if (t := self.template_for(a, resource_type)) is not None]
        if not serving:
            raise InvalidInput(self._unservable(agents, resource_type))
        now = time.time()
        load: dict[str, int] = {}
        for r in self.store.live_runners():
            load[r.agent_id] = load.get(r.agent_id, 0) + 1
        free = [(a, t) for a, t in serving if a.online and a.blocked_until <= now and not a.out_of_placement()
                and load.get(a.agent_id, 0) < a.max_runners]
        if not free:
            online = sum(1 for a, _ in serving if a.online)
            templates = ", ".join(sorted({t.name for _, t in serving}))
            out = [f"{a.agent_id} ({'; '.join(c.describe() for c in a.out_of_placement())})" for a, _ in serving
                   if a.online and a.out_of_placement()]
            raise CapacityExhausted(
                f"no free capacity for {resource_type} (template {templates}): {online} of {len(serving)} "
                "agents holding it online, "
                + (f"out of placement: {', '.join(out)}; the others' slots taken" if out else "all slots taken")
            )

        def warm_free(agent: AgentRow, template: HeldTemplate) -> int:
            return template.free_warm_slots - claims.get((agent.agent_id, template.name), 0)

        agent, template = min(free, key=lambda at: (
            warm_free(*at) <= 0, load.get(at[0].agent_id, 0) / at[0].max_runners, at[0].agent_id))
        runner = RunnerRow(
            runner_id=new_runner_id(), runner_name=runner_name, agent_id=agent.agent_id,
            state=Phase.CREATING.value, resource_type=resource_type, template=template.name, labels=labels,
            created_at=now, updated_at=now,
        )
        cmd = Command(new_request_id(), agent.agent_id, runner.runner_id, "create", {
            "runner_name": runner_name, "setup_script": setup_script, "resource_type": resource_type,
            "template": template.name, "labels": labels,
        })
        self.store.insert_runner_with_command(runner, cmd)
        return runner, cmd, warm_free(agent, template) > 0

    def _unservable(self, agents: list[AgentRow], resource_type: str) -> str:
        """Why no registered agent can ever run `resource_type`: the INVALID_ARGUMENT message."""
        held = sorted({t.name for a in agents for t in a.templates})
        if self.mapping:
            mapping = f"server resource_types: {describe_mapping(self.mapping)}"
            name = self.mapping.get(resource_type)
            if name is None:
                return f"resource_type {resource_type!r} is not in the server's resource_types mapping; {mapping}"
            return (f"resource_type {resource_type!r} maps to template {name!r}, which no registered agent "
                    f"holds (agents hold: {', '.join(held) or 'no templates'}); {mapping}")
        served = {rt for a in agents for t in a.templates for rt in t.resource_types}
        types = ", ".join(t for t in RESOURCE_TYPES if t in served) or "nothing"
        return (f"no template on any registered agent serves resource_type {resource_type!r}; the agents' "
                f"templates serve: {types} (no server resource_types mapping is configured, so each "
                "template's own resource_types decide)")
