"""The go-plugin launch contract as myshoes uses it (DESIGN §3.3; reference myshoes-plugin.md §2-3).

The host sets `SHOES_PLUGIN_MAGIC_COOKIE`, `PLUGIN_PROTOCOL_VERSIONS` and `PLUGIN_MIN_PORT`/
`PLUGIN_MAX_PORT`, then reads exactly one line from the plugin's stdout:
`CORE|APP|NETWORK|ADDR|PROTOCOL`, for us `1|1|tcp|127.0.0.1:<port>|grpc`.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAGIC_COOKIE_KEY = "SHOES_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE = "are_you_a_shoes?"
CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 1
HOST = "127.0.0.1"

NOT_A_PROGRAM_MESSAGE = (
    "This binary is a plugin for myshoes (shoes-vz-plugin). It is not meant to be run directly:\n"
    "point myshoes' PLUGIN at it and myshoes starts it once per call with the environment it needs.\n"
    "To try it by hand, use `shoes-vz plugin call ...`; see docs/myshoes.md."
)


class HandshakeError(Exception):
    """The host's environment cannot be served (its text is shown to the operator)."""


def cookie_ok(env: Mapping[str, str]) -> bool:
    return env.get(MAGIC_COOKIE_KEY) == MAGIC_COOKIE_VALUE


def check_host(env: Mapping[str, str]) -> list[str]:
    """Problems with the host's request we cannot serve, plus warnings we can live with.

    Raises HandshakeError for the former; returns the warnings.
    """
    warnings: list[str] = []
    if env.get("PLUGIN_CLIENT_CERT"):
        raise HandshakeError(
            "the host asked for AutoMTLS (PLUGIN_CLIENT_CERT), which shoes-vz-plugin does not "
            "support; myshoes does not use it"
        )
    if env.get("PLUGIN_MULTIPLEX_GRPC", "").lower() in ("1", "true"):
        warnings.append("the host asked for gRPC broker multiplexing; not supported, ignored")
    versions = [v.strip() for v in env.get("PLUGIN_PROTOCOL_VERSIONS", "").split(",") if v.strip()]
    if versions and str(APP_PROTOCOL_VERSION) not in versions:
        # go-plugin servers announce their own version anyway and let the host refuse it
        warnings.append(
            f"the host offers app protocol versions {','.join(versions)}; this plugin speaks "
            f"{APP_PROTOCOL_VERSION}"
        )
    return warnings


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PortRange:
        """`PLUGIN_MIN_PORT`..`PLUGIN_MAX_PORT`; both unset means any free port (0)."""
        low_s, high_s = env.get("PLUGIN_MIN_PORT", "").strip(), env.get("PLUGIN_MAX_PORT", "").strip()
        if not low_s and not high_s:
            return cls(0, 0)
        try:
            low = int(low_s) if low_s else 1024
            high = int(high_s) if high_s else 65535
        except ValueError as e:
            raise HandshakeError(f"PLUGIN_MIN_PORT/PLUGIN_MAX_PORT are not numbers: {e}") from None
        if not (0 <= low <= high <= 65535):
            raise HandshakeError(f"bad plugin port range {low}..{high}")
        return cls(low, high)

    def candidates(self, rng: random.Random | None = None) -> list[int]:
        """Every port of the range once, from a random start, so concurrent plugins rarely collide."""
        if self.low == self.high == 0:
            return [0]
        ports = list(range(self.low, self.high + 1))
        start = (rng or random).randrange(len(ports))
        return ports[start:] + ports[:start]


def _port_free(port: int) -> bool:
    """A quiet pre-check (no gRPC error log per busy port); the real bind may still lose a race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def bind_in_range(ports: PortRange, bind: Callable[[str], int]) -> int:
    """Bind with `bind("127.0.0.1:<port>")` (returns the bound port, raises or returns 0 on failure)
    to the first free port of the range; returns the port."""
    for port in ports.candidates():
        if port and not _port_free(port):
            continue
        try:
            bound = bind(f"{HOST}:{port}")
        except RuntimeError:
            continue
        if bound:
            return bound
    raise HandshakeError(f"no free TCP port on {HOST} in {ports.low}..{ports.high}")


def handshake_line(port: int) -> str:
    return f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|tcp|{HOST}:{port}|grpc"
