"""A Sync message is about its sender only (docs/security.md §3).

The agent that authenticated the stream is the only one a message may speak for: its `agent_id`,
every runner it reports and every command it acknowledges must be that agent's. One that is not is
refused whole before anything is applied (Forbidden → PERMISSION_DENIED): nothing changes, and the
reply does not say whose the runner or command is.
"""

from __future__ import annotations

from shoes_vz.core.errors import Forbidden
from shoes_vz.core.logsafe import shown
from shoes_vz.server.store import Store
from shoes_vz.wire import agent_pb2 as pb


class Refused(Forbidden):
    """Forbidden, with what the server's log says (it may name the other agent; the caller is not told)."""

    def __init__(self, message: str, detail: str, subject: str) -> None:
        super().__init__(message)
        self.detail = detail
        self.subject = subject  # what is refused ("runner", "ack", "id"): one log line per agent and kind a minute


def check_agent_id(agent_id: str, claimed: str, what: str) -> None:
    """`claimed` (empty: the sender's own) must be the authenticated `agent_id`."""
    if claimed and claimed != agent_id:
        raise Refused(f"{what} names agent {shown(claimed)}, but this caller is agent {agent_id}",
                      f"agent {agent_id} sent {what} naming agent {shown(claimed)}", "id")


async def check_report(store: Store, agent_id: str, req: pb.SyncRequest) -> None:
    """Refuse `req` unless everything in it is `agent_id`'s own (its limits are checked already)."""
    check_agent_id(agent_id, req.agent_id, "a Sync message")
    for r in req.runners:
        check_agent_id(agent_id, r.agent_id, f"the report of runner {r.runner_id}")
    owners = await store.call(store.runner_agents, [r.runner_id for r in req.runners])
    for runner_id, owner in owners.items():
        if owner != agent_id:
            raise Refused(f"runner {runner_id} is not agent {agent_id}'s",
                          f"agent {agent_id} reported runner {runner_id}, which runs on agent {owner}",
                          "runner")
    addressed = await store.call(store.command_agents, [a.request_id for a in req.acks])
    for request_id, owner in addressed.items():
        if owner != agent_id:
            raise Refused(f"command {request_id} was not sent to agent {agent_id}",
                          f"agent {agent_id} acknowledged command {request_id}, which is agent {owner}'s",
                          "ack")


__all__ = ["Refused", "check_agent_id", "check_report"]
