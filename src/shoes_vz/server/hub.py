"""Live connections to agents (one Sync stream each) and runner-change notifications."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from shoes_vz.server.store import Command, Store
from shoes_vz.wire import agent_pb2 as pb

log = logging.getLogger(__name__)


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
    peer: str = ""
    queue: asyncio.Queue[pb.SyncResponse | None] = field(default_factory=asyncio.Queue)
    replaced_by: str = ""  # the peer whose stream took this one's place

    def close(self) -> None:
        self.queue.put_nowait(None)


DUPLICATE_WINDOW = 60.0  # replacements closer than this are two live agents, not one reconnecting


class Hub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.connections: dict[str, Connection] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._replaced_at: dict[str, float] = {}
        self._warned_at: dict[str, float] = {}

    # -- agents ---------------------------------------------------------------------------------
    def attach(self, agent_id: str, peer: str = "") -> Connection:
        old = self.connections.get(agent_id)
        if old is not None:
            old.replaced_by = peer or "another stream"
            old.close()  # a reconnecting agent replaces its stale stream
            self._replaced(agent_id, old.peer, peer)
        conn = Connection(agent_id, peer)
        self.connections[agent_id] = conn
        return conn

    def _replaced(self, agent_id: str, old_peer: str, new_peer: str) -> None:
        """A stream replaced now and then is an agent reconnecting; often, two agents with one id."""
        now = time.monotonic()
        last, self._replaced_at[agent_id] = self._replaced_at.get(agent_id), now
        if last is None or now - last > DUPLICATE_WINDOW:
            return
        if now - self._warned_at.get(agent_id, -DUPLICATE_WINDOW) < DUPLICATE_WINDOW:
            return
        self._warned_at[agent_id] = now
        peers = f"from {old_peer}" if old_peer == new_peer else f"from {old_peer or '?'} and {new_peer or '?'}"
        log.error("agent %s: two live Sync streams keep replacing each other (%s): two agents share one agent id "
                  "— a copied state directory (its agent-id file) or two agents on one host; give each agent its "
                  "own agent.state_dir", agent_id, peers)

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
