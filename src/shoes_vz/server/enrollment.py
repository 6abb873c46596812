"""`Enrollment`: an agent's identity — an id and a secret, exchanged once for the enrolment token.

The agent proposes its id (the one kept in its state directory) and gets a fresh 256-bit secret,
which it keeps 0600 next to the id; the server keeps only the secret's SHA-256 (the secret is
random, so a plain hash is as strong as a slow one and costs nothing per call). An id that is
enrolled already is never handed a second secret: whoever holds the enrolment token can add a new
host, never become an existing one. The operator releases an id with `shoes-vz server forget-agent`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path

from shoes_vz.core.errors import ConfigError, Forbidden, NotFound
from shoes_vz.core.logsafe import shown
from shoes_vz.core.pidlock import PIDLock
from shoes_vz.server.store import Store

log = logging.getLogger(__name__)
SECRET_BYTES = 32


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def forget_command(agent_id: str) -> str:
    return f"shoes-vz server forget-agent {agent_id} -c <the server's config>"


class Enrollment:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def enroll(self, agent_id: str, hostname: str) -> str:
        """A new secret for `agent_id`; Forbidden when the id is enrolled already."""
        secret = secrets.token_urlsafe(SECRET_BYTES)
        if not await self.store.call(self.store.enroll_agent, agent_id, hostname, secret_sha256(secret)):
            raise Forbidden(
                f"agent id {shown(agent_id)} is enrolled already; an enrolment token cannot take over an enrolled "
                f"agent. If this host is that agent and lost its secret (<agent.state_dir>/agent-secret), the "
                f"operator releases the id on the server with `{forget_command(agent_id)}` (server stopped); if "
                "another host has this id (a copied state directory), give this one its own agent.state_dir")
        log.info("agent %s (%s) enrolled", shown(agent_id), shown(hostname or "?"))
        return secret

    async def verify(self, agent_id: str, secret: str) -> bool:
        """True when `agent_id` is enrolled with `secret`."""
        known = await self.store.call(self.store.agent_secret_sha256, agent_id)
        return known is not None and hmac.compare_digest(known, secret_sha256(secret))




def forget_offline(db_path: Path, agent_id: str) -> str:
    """Drop `agent_id`'s enrolment from the database at `db_path`, with no server running on it (a
    live server would go on trusting the stream it has); what was done, for the operator."""
    if not db_path.is_file():
        raise ConfigError(f"no server database at {db_path} (server.db_path, --db)")
    lock = PIDLock(db_path.with_name(db_path.name + ".lock"), "forget-agent")
    lock.acquire(f"the database {db_path}", "Stop the server first: forget-agent works on its database offline.")
    store = Store(db_path)
    try:
        store.open()
        if not store.forget_agent(agent_id):
            enrolled = [a for a, _, _ in store.enrolled_agents()]
            raise NotFound(f"agent {shown(agent_id)} is not enrolled in {db_path}; enrolled: "
                           f"{', '.join(enrolled[:20]) or 'none'}" + (" …" if len(enrolled) > 20 else ""))
    finally:
        store.close()
        lock.release()
    return (f"agent {agent_id}: enrolment dropped; its runners and history stay. It enrols again on its next "
            "connection (with agent.enrollment_token) and gets a new secret.")


__all__ = ["Enrollment", "forget_command", "forget_offline", "secret_sha256"]
