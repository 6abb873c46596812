"""Who is calling: the principal the server's interceptor resolved for this call (docs/security.md §2).

The interceptor (server/auth.py) resolves the caller's credentials once per call and sets
`current()` for the servicer that handles it; each servicer then states which role it serves with
`await allow(context, Role.…)`. A known caller of another role gets PERMISSION_DENIED; a caller with
no credentials never gets that far on a service that needs them (UNAUTHENTICATED).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

import grpc

from shoes_vz.core.logsafe import shown


class Role(StrEnum):
    MYSHOES = "myshoes"          # shoes_token: ShoesService only
    ENROLLMENT = "enrollment"    # enrollment_token: AgentService.Enroll only
    AGENT = "agent"              # an enrolled agent's id + secret: AgentService as itself
    OPERATOR = "operator"        # operator_token: the admin surface
    VIEWER = "viewer"            # viewer_token: the read-only part of it
    NONE = "none"                # no credentials (only where the server runs open on loopback)


@dataclass(frozen=True)
class Principal:
    role: Role
    agent_id: str = ""           # for Role.AGENT

    def __str__(self) -> str:
        return f"agent:{self.agent_id}" if self.role is Role.AGENT else self.role.value


NOBODY = Principal(Role.NONE)
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("shoes_vz_principal", default=NOBODY)


def current() -> Principal:
    """The caller of the call being handled (NOBODY outside one)."""
    return _current.get()


def bind(principal: Principal) -> None:
    """Set for the rest of this call's task (and the tasks it starts): the interceptor's job."""
    _current.set(principal)


async def allow(context: grpc.aio.ServicerContext, *roles: Role) -> Principal:
    """The caller, when its role is one of `roles`; otherwise the call ends here."""
    p = current()
    if p.role in roles:
        return p
    if p.role is Role.NONE:
        await deny(context, grpc.StatusCode.UNAUTHENTICATED, "this call needs credentials")
    await deny(context, grpc.StatusCode.PERMISSION_DENIED,
               f"{shown(str(p))} may not call this ({' or '.join(r.value for r in roles)} only)")


async def deny(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


__all__ = ["NOBODY", "Principal", "Role", "allow", "bind", "current", "deny"]
