"""`shown()`: any value a caller sent, made safe to log or to echo in an error message.

Every field that came over a boundary (an agent id, a template name, a cloud_id, a runner's error)
goes through here before it reaches a log line or a gRPC status: control characters are escaped (a
newline in a template name must not forge a second log line), and the text is capped (a 20 kB
agent id must not become 20 kB of log per call, nor a status too large to send).
"""

from __future__ import annotations

DEFAULT_LIMIT = 80


def shown(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` quoted and escaped the way `repr` does (`'a\\nb'`), at most about `limit` characters of
    it; cut text ends with how much was cut (`…(+19900 chars)`)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    out = repr(text[:limit] if cut > 0 else text)
    return out + (f"…(+{cut} chars)" if cut > 0 else "")


__all__ = ["DEFAULT_LIMIT", "shown"]
