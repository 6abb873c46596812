"""Live connections to agents (one Sync stream each) and runner-change notifications."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shoes_vz.server.store import Command, Store
from shoes_vz.wire import agent_pb2 as pb


def command_message(cmd: Command) -> pb.SyncResponse:
    p = cmd.payload
    if cmd.kind == "create":
        return pb.SyncResponse(create_runner=pb.CreateRunnerCommand(
            runner_id=cmd.runner_id, runner_name=p["runner_name"], setup_script=p["setup_script"],
            request_id=cmd.request_id, resource_type=p["resource_type"], template=p["template"],
            labels=p["labels"],
        ))
    return pb.SyncResponse(delete_runner=pb.DeleteRunnerCommand(runner_id=cmd.runner_id,
                                                                request_id=cmd.request_id))


@dataclass(eq=False)
class Connection:
    agent_id: str
    queue: asyncio.Queue[pb.SyncResponse | None] = field(default_factory=asyncio.Queue)

    def close(self) -> None:
        self.queue.put_nowait(None)


class Hub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.connections: dict[str, Connection] = {}
        self._events: dict[str, asyncio.Event] = {}

    # -- agents ---------------------------------------------------------------------------------
    def attach(self, agent_id: str) -> Connection:
        old = self.connections.get(agent_id)
        if old is not None:
            old.close()  # a reconnecting agent replaces its stale stream
        conn = Connection(agent_id)
        self.connections[agent_id] = conn
        return conn

    def detach(self, conn: Connection) -> bool:
        """Forget `conn`; True when it was the agent's current connection."""
        if self.connections.get(conn.agent_id) is conn:
            del self.connections[conn.agent_id]
            return True
        return False

    async def send(self, commands: list[Command]) -> None:
        """Push commands to connected agents now; the rest wait in the outbox for a reconnect."""
        sent = []
        for cmd in commands:
            conn = self.connections.get(cmd.agent_id)
            if conn is not None:
                conn.queue.put_nowait(command_message(cmd))
                sent.append(cmd.request_id)
        if sent:
            await self.store.call(self.store.mark_sent, sent)

    # -- runner changes -------------------------------------------------------------------------
    def event(self, runner_id: str) -> asyncio.Event:
        """Take this before reading the runner's state, then wait on it: no change is missed."""
        return self._events.setdefault(runner_id, asyncio.Event())

    def changed(self, runner_id: str) -> None:
        ev = self._events.pop(runner_id, None)
        if ev is not None:
            ev.set()
