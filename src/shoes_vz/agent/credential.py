"""`AgentCredential`: this agent's identity towards the server — its id and the secret it enrolled for.

The first contact sends the enrolment token (agent.enrollment_token) with `Enroll` and gets a secret,
kept in `<state_dir>/agent-secret` (0600, next to `agent-id`); every later call carries
`authorization: Agent <id>:<secret>`. When the server no longer knows the secret (its database was
replaced, or the operator ran `shoes-vz server forget-agent`), the agent enrols again; an id the
server has enrolled with another secret is refused, and the agent says what the operator can do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
from pathlib import Path

import grpc

from shoes_vz.core.errors import ConfigError
from shoes_vz.wire import agent_pb2 as pb
from shoes_vz.wire import agent_pb2_grpc as pbg

SECRET_FILE = "agent-secret"
SECRET_MODE = 0o600
_HOSTNAME_JUNK = re.compile(r"[^A-Za-z0-9._-]+")


def hostname() -> str:
    """This host's name as the server accepts it (server/limits.py: up to 253 of A-Z a-z 0-9 . _ -)."""
    return _HOSTNAME_JUNK.sub("-", socket.gethostname())[:253]


class AgentCredential:
    def __init__(self, state_dir: Path, enrollment_token: str | None) -> None:
        self.path = state_dir / SECRET_FILE
        self.enrollment_token = enrollment_token
        self.agent_id = ""
        self.secret = ""

    def load(self, agent_id: str) -> None:
        """The secret kept for `agent_id`, if any (a file anyone else may read is made ours alone)."""
        self.agent_id = agent_id
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            self.secret = ""
            return
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{self.path} is not a regular file of this user: remove it (the agent enrols again)")
        if stat.S_IMODE(st.st_mode) != SECRET_MODE:
            os.chmod(self.path, SECRET_MODE)
        self.secret = self.path.read_text().strip()

    def save(self, secret: str) -> None:
        """Written 0600 from the start (a temp file renamed over the old one)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SECRET_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.secret = secret

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What RegisterAgent and Sync carry."""
        return (("authorization", f"Agent {self.agent_id}:{self.secret}"),)

    async def enroll(self, stub: pbg.AgentServiceStub) -> None:
        """Trade the enrolment token for a secret, kept at once (grpc.aio.AioRpcError when refused)."""
        md = (("authorization", f"Bearer {self.enrollment_token}"),) if self.enrollment_token else ()
        reply = await stub.Enroll(pb.EnrollRequest(agent_id=self.agent_id, hostname=hostname()), metadata=md,
                                  timeout=10)
        await asyncio.to_thread(self.save, reply.agent_secret)

    def describe_refusal(self, e: grpc.aio.AioRpcError, server_addr: str) -> str:
        """The one line an operator needs when the server refuses to enrol this agent."""
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            given = "the enrollment token this agent sends" if self.enrollment_token else \
                "no enrollment token (this agent has none)"
            return (f"the server at {server_addr} rejects {given}: set agent.enrollment_token in the config file, "
                    f"or SHOESVZ_AGENT_ENROLLMENT_TOKEN, to the server's enrollment_token; retrying ({e.details()})")
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            return f"the server at {server_addr} refuses to enrol agent {self.agent_id}: {e.details()}; retrying"
        return f"enrolling with {server_addr} failed: {e.code().name} {e.details()}"


__all__ = ["SECRET_FILE", "AgentCredential", "hostname"]
