"""A runner's teardown, asked for by myshoes (DeleteInstance) or an operator (`shoes-vz delete`).

Durable: the delete intent and its command are written to the outbox before anything is sent, so an
agent that is offline now gets the command when it connects again; a create it never acknowledged is
cancelled with it. A runner whose delete was asked for is NOT_FOUND to a later DeleteInstance.
"""

from __future__ import annotations

from shoes_vz.server.hub import Hub
from shoes_vz.server.scheduler import new_request_id
from shoes_vz.server.store import Command, RunnerRow, Store


async def request_delete(store: Store, hub: Hub, row: RunnerRow) -> bool:
    """Ask `row`'s agent to tear it down; False when that was asked for already (or it is gone)."""
    if row.delete_requested or row.deleted_at is not None:
        return False
    cmd = Command(new_request_id(), row.agent_id, row.runner_id, "delete", {})
    await store.call(store.request_delete, row.runner_id, cmd)
    await hub.send([cmd])
    return True


__all__ = ["request_delete"]
