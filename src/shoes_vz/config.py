"""Settings for the server, the agent and `vm run`.

Precedence, highest first: command-line flags, environment (`SHOESVZ_SERVER_*`, `SHOESVZ_AGENT_*`),
the TOML file (`--config` or `SHOESVZ_CONFIG`; tables `[server]` and `[agent]`), the defaults
below. The defaults are the production paths of the seed design.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shoes_vz.core.errors import ConfigError, InvalidInput
from shoes_vz.core.ids import validate_template_name
from shoes_vz.core.net import is_loopback, split_hostport
from shoes_vz.core.resources import RESOURCE_TYPES, canonical_resource_type

DEFAULT_TEMPLATES_DIR = Path("/opt/myshoes/vz/templates")
DEFAULT_RUNNERS_DIR = Path("/opt/myshoes/vz/runners")
DEFAULT_RUNNER_STATE_FILE = Path("/var/run/myshoes/runner-state.json")
DEFAULT_STATE_DIR = Path("/var/lib/shoes-vz")
DEFAULT_LEASE_FILE = Path("/var/db/dhcpd_leases")


def _check_hostport(value: str) -> str:
    split_hostport(value)
    return value


def _resource_type_map(value: Any) -> dict[str, str]:
    """`{myshoes type: template name}` with upstream's aliases folded into myshoes' names."""
    if isinstance(value, str):  # the environment gives JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f'not JSON ({e}); write e.g. {{"small": "macos-15"}}') from None
    if not isinstance(value, dict):
        raise ValueError('must be a table / JSON object of type = "template", e.g. small = "macos-15"')
    problems: list[str] = []
    mapping: dict[str, str] = {}
    given_as: dict[str, str] = {}
    for key, template in value.items():
        try:
            rtype = canonical_resource_type(str(key))
            if not isinstance(template, str):
                raise InvalidInput(f"template name must be a string, got {template!r}")
            validate_template_name(template)
        except InvalidInput as e:
            problems.append(f"{key!r}: {e}")
            continue
        if rtype in mapping and mapping[rtype] != template:
            problems.append(f"{given_as[rtype]!r} and {key!r} are the same type with different templates")
        mapping[rtype], given_as[rtype] = template, str(key)
    if problems:
        raise ValueError("; ".join(problems))
    return mapping


class _Base(BaseSettings):
    _table: ClassVar[str] = ""
    _config_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = cls._config_file
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path, toml_table_header=(cls._table,)))
        return tuple(sources)


class ServerSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="SHOESVZ_SERVER_", extra="forbid")
    _table: ClassVar[str] = "server"

    listen: str = Field("127.0.0.1:50051", description="gRPC address (ShoesService, AgentService, health)")
    metrics_listen: str = Field("127.0.0.1:9090", description="HTTP address of /metrics; empty disables")
    db_path: Path = Field(DEFAULT_STATE_DIR / "server.db", description="SQLite database (WAL)")
    token: str | None = Field(None, description="bearer token agents and the plugin must send")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plaintext: bool = Field(False, description="allow plaintext gRPC on a non-loopback address")
    default_resource_type: str = "small"
    resource_types: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="myshoes type → template name; empty: each template's own resource_types decide",
    )
    add_instance_timeout: float = Field(300.0, gt=0, description="upper bound of one AddInstance call")
    sync_interval: float = Field(5.0, gt=0, description="agent heartbeat period, seconds")
    agent_offline_after: float = Field(20.0, gt=0, description="no heartbeat for this long → offline")
    command_resend_after: float = Field(10.0, gt=0, description="re-send an unacked command after")

    _hostport = field_validator("listen")(_check_hostport)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, v: str) -> str:
        return _check_hostport(v) if v else v

    @field_validator("default_resource_type")
    @classmethod
    def _rt(cls, v: str) -> str:
        if v not in RESOURCE_TYPES:
            raise ValueError(f"must be one of {', '.join(RESOURCE_TYPES)}")
        return v

    @field_validator("resource_types", mode="before")
    @classmethod
    def _rt_map(cls, v: Any) -> dict[str, str]:
        return _resource_type_map(v)

    def check_transport(self) -> None:
        host, _ = split_hostport(self.listen)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("server: tls_cert and tls_key must be given together")
        if not self.tls_cert and not is_loopback(host) and not self.allow_plaintext:
            raise ConfigError(
                f"server: refusing plaintext gRPC on {self.listen}: set tls_cert/tls_key, bind to "
                "loopback, or set allow_plaintext = true"
            )


def _default_driver() -> str:
    return "vz" if sys.platform == "darwin" else "sim"


class AgentSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="SHOESVZ_AGENT_", extra="forbid")
    _table: ClassVar[str] = "agent"

    server_addr: str = Field("127.0.0.1:50051", description="the server's gRPC address")
    token: str | None = None
    tls_ca: Path | None = Field(None, description="CA bundle to verify the server; enables TLS")
    state_dir: Path = Field(DEFAULT_STATE_DIR, description="agent id and SSH key live here")
    templates_dir: Path = DEFAULT_TEMPLATES_DIR
    runners_dir: Path = DEFAULT_RUNNERS_DIR
    runner_state_file: Path = DEFAULT_RUNNER_STATE_FILE
    lease_file: Path = Field(DEFAULT_LEASE_FILE, description="bootpd's lease file (sim: written by sim VMs)")
    driver: str = Field(default_factory=_default_driver)
    driver_options: dict[str, Any] = Field(
        default_factory=dict, description="the driver's own options, passed to `vm run` as they are "
        "([agent.driver_options]; sim: mode, subnet, pool_size, lease_seconds, dhcp_release, ...)")
    max_runners: int = Field(2, ge=1, le=64, description="VMs at once; Apple allows 2 macOS guests")
    notify_listen: str = Field("0.0.0.0:8081", description="IP-notify HTTP server (guest-facing)")
    notify_url: str = Field(
        "", description="URL guests POST to; default http://<gateway>:<notify port>/notify-ip"
    )
    metrics_listen: str = Field("127.0.0.1:9091", description="agent /metrics; empty disables")
    ssh_key: Path | None = Field(None, description="private key for guests; default: template's sim key")
    runner_agent_port: int = 8080
    boot_to_ip_timeout: float = Field(180.0, gt=0)
    ip_to_ssh_timeout: float = Field(60.0, gt=0)
    create_timeout: float = Field(300.0, gt=0)
    stop_grace: float = Field(10.0, ge=0, description="seconds between a stop request and a hard stop")
    guest_poll_interval: float = Field(2.0, gt=0)
    allow_copy: bool = Field(False, description="DEV ONLY: full copy when the volume cannot clone")
    sim_boot_delay: float = Field(0.0, ge=0, description="sim: seconds a guest takes to 'boot'")
    sim_restore_delay: float = Field(0.0, ge=0, description="sim: seconds a restore from State.save takes")
    use_warm_slots: bool = Field(True, description="restore runners from free warm slots when there are any")

    @field_validator("server_addr", "notify_listen")
    @classmethod
    def _hp(cls, v: str) -> str:
        return _check_hostport(v)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, v: str) -> str:
        return _check_hostport(v) if v else v

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if v not in ("sim", "vz"):
            raise ValueError("must be 'sim' or 'vz'")
        return v

    def effective_notify_url(self, bound_port: int | None = None) -> str:
        if self.notify_url:
            return self.notify_url
        host, port = split_hostport(self.notify_listen)
        port = bound_port or port
        if host in ("0.0.0.0", "::"):
            # every interface: guests find the host as their default gateway (a Mac's 192.168.64.1, a
            # namespaced sim guest's bridge; a loopback sim guest's driver makes it 127.0.0.1)
            return f"auto:{port}"
        if is_loopback(host):
            host = "127.0.0.1"
        return f"http://{host}:{port}/notify-ip"


S = TypeVar("S", bound=_Base)


def load(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    """Build settings from flags (`overrides`, None means unset), env and the TOML file."""
    path = config_file or (Path(os.environ["SHOESVZ_CONFIG"]) if os.environ.get("SHOESVZ_CONFIG") else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    flags = {k: v for k, v in overrides.items() if v is not None}
    cls._config_file = path
    try:
        return cls(**flags)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "?"
            lines.append(f"  {cls._table}.{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid {cls._table} configuration:\n" + "\n".join(lines)) from None
    except Exception as e:  # a TOML syntax error, or an environment value pydantic-settings cannot parse
        where = f"configuration {path}" if path is not None else f"{cls._table} settings from the environment"
        raise ConfigError(f"cannot read {where}: {e}") from e
    finally:
        cls._config_file = None
