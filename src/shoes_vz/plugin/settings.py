"""The plugin's configuration: only environment variables, since myshoes starts it with no arguments.

myshoes passes its whole environment down to the plugin (go-plugin's host does not filter it), so
these go next to myshoes' own variables, e.g. in `/etc/default/myshoes`:

| variable | meaning |
|---|---|
| `SHOESVZ_SERVER_ADDR` | **required**: the shoes-vz server's gRPC address, `HOST:PORT` |
| `SHOESVZ_TOKEN` | the server's `shoes_token` (sent as `authorization: Bearer …`); it opens ShoesService only |
| `SHOESVZ_TLS_CA` | PEM CA bundle to verify the server; enables TLS |
| `SHOESVZ_TLS` | `1`: TLS with the system's CA roots (implied by `SHOESVZ_TLS_CA`) |
| `SHOESVZ_TLS_SERVER_NAME` | name to verify in the server's certificate (default: the host part) |
| `SHOESVZ_ALLOW_PLAINTEXT` | `1`: allow plaintext to a non-loopback server (default: refused) |
| `SHOESVZ_DEFAULT_RESOURCE_TYPE` | type used when myshoes sends `Unknown`; unset: the server's default |
| `SHOESVZ_PLUGIN_LOG_LEVEL` | `trace`, `debug`, `info` (default), `warn`, `error` |
| `SHOESVZ_PLUGIN_LOG_FORMAT` | `text` (default, `[INFO]  …` lines) or `json` (hclog JSON) |
| `SHOESVZ_PLUGIN_DISABLE_SHUTDOWN` | `1`: do not serve `plugin.GRPCController` (benchmark baseline only) |

Read with the standard library only: the plugin is started once per myshoes call, so its startup
time is part of every AddInstance and DeleteInstance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shoes_vz.core.errors import ConfigError
from shoes_vz.core.logs import LOG_FORMATS
from shoes_vz.core.net import is_loopback, split_hostport
from shoes_vz.core.resources import ALIASES, RESOURCE_TYPES

LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use 1 or 0)")


def _split_hostport(value: str) -> tuple[str, int]:
    try:
        host, port = split_hostport(value)
    except ValueError:
        host, port = "", 0
    if not value.rpartition(":")[0] or not port:
        raise ConfigError(f"SHOESVZ_SERVER_ADDR={value!r} is not HOST:PORT")
    return host, port


@dataclass(frozen=True)
class PluginSettings:
    server_addr: str
    token: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    default_resource_type: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    disable_shutdown: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginSettings:
        """Parse and check the environment; raises ConfigError with an operator-readable message."""
        env = os.environ if env is None else env
        addr = env.get("SHOESVZ_SERVER_ADDR", "").strip()
        if not addr:
            raise ConfigError(
                "SHOESVZ_SERVER_ADDR is not set: set it to the shoes-vz server's gRPC address "
                "(HOST:PORT) in the environment myshoes runs with"
            )
        host, _ = _split_hostport(addr)
        ca_value = env.get("SHOESVZ_TLS_CA", "").strip()
        tls_ca = Path(ca_value) if ca_value else None
        if tls_ca is not None and not tls_ca.is_file():
            raise ConfigError(f"SHOESVZ_TLS_CA={ca_value!r} is not a readable file")
        tls = tls_ca is not None or _flag(env, "SHOESVZ_TLS")
        if not tls and not is_loopback(host) and not _flag(env, "SHOESVZ_ALLOW_PLAINTEXT"):
            raise ConfigError(
                f"refusing plaintext gRPC to {addr}: set SHOESVZ_TLS_CA (or SHOESVZ_TLS=1), use a "
                "loopback address, or set SHOESVZ_ALLOW_PLAINTEXT=1"
            )
        default = env.get("SHOESVZ_DEFAULT_RESOURCE_TYPE", "").strip().lower() or None
        if default is not None:
            default = ALIASES.get(default, default)
            if default not in RESOURCE_TYPES:
                raise ConfigError(
                    f"SHOESVZ_DEFAULT_RESOURCE_TYPE={default!r} is not one of {', '.join(RESOURCE_TYPES)}"
                )
        level = env.get("SHOESVZ_PLUGIN_LOG_LEVEL", "info").strip().lower() or "info"
        if level not in LOG_LEVELS:
            raise ConfigError(f"SHOESVZ_PLUGIN_LOG_LEVEL={level!r} is not one of {', '.join(LOG_LEVELS)}")
        fmt = env.get("SHOESVZ_PLUGIN_LOG_FORMAT", "text").strip().lower() or "text"
        if fmt not in LOG_FORMATS:
            raise ConfigError(f"SHOESVZ_PLUGIN_LOG_FORMAT={fmt!r} is not one of {', '.join(LOG_FORMATS)}")
        return cls(
            server_addr=addr,
            token=env.get("SHOESVZ_TOKEN", "").strip() or None,
            tls=tls,
            tls_ca=tls_ca,
            tls_server_name=env.get("SHOESVZ_TLS_SERVER_NAME", "").strip() or None,
            default_resource_type=default,
            log_level=level,
            log_format=fmt,
            disable_shutdown=_flag(env, "SHOESVZ_PLUGIN_DISABLE_SHUTDOWN"),
        )
