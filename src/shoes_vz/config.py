"""Settings for the server, the agent and `vm run`.

Precedence, highest first: command-line flags, environment (`SHOESVZ_SERVER_*`, `SHOESVZ_AGENT_*`,
`SHOESVZ_ADMIN_*`), the TOML file (`--config` or `SHOESVZ_CONFIG`; tables `[server]`, `[agent]` and
`[admin]`, the fleet commands' way to the server), the defaults
below. The default paths are per platform (`core.host_defaults`): the seed's system paths on Linux, the
service user's `~/.shoes-vz` on macOS, where the agent runs as a normal user (docs/macos-host.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shoes_vz.core.errors import ConfigError, InvalidInput
from shoes_vz.core.host_defaults import DEFAULTS, HOST_VM_LIMIT, vm_slots_dir
from shoes_vz.core.ids import validate_template_name
from shoes_vz.core.net import is_loopback, split_hostport
from shoes_vz.core.resources import RESOURCE_TYPES, canonical_resource_type

LogFormat = Literal["text", "json"]  # core/logs.py LOG_FORMATS

DEFAULT_TEMPLATES_DIR = DEFAULTS.templates_dir
DEFAULT_RUNNERS_DIR = DEFAULTS.runners_dir
DEFAULT_RUNNER_STATE_FILE = DEFAULTS.runner_state_file
DEFAULT_STATE_DIR = DEFAULTS.state_dir
DEFAULT_LEASE_FILE = DEFAULTS.lease_file


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


TOKEN_MIN_CHARS = 16
SERVER_TOKENS = ("shoes_token", "enrollment_token", "operator_token", "viewer_token")
REMOVED = {  # (table, key) → what replaced it: a config that still has it is refused, naming the new keys
    ("server", "token"): "server.token is gone: the myshoes side's token is now server.shoes_token (the plugin "
                         "keeps sending it as SHOESVZ_TOKEN) and agents enrol with server.enrollment_token "
                         "(docs/security.md)",
    ("agent", "token"): "agent.token is gone: set agent.enrollment_token to the server's enrollment_token; the agent "
                        "then enrols once and keeps its own secret in <agent.state_dir>/agent-secret",
    ("agent", "ssh_key"): "agent.ssh_key is gone: every runner now gets its own short-lived SSH certificate from the "
                          "agent's user CA (<agent.state_dir>/ssh-user-ca); templates trust it through the "
                          "runner-agent (docs/building-templates.md)",
}


def _refuse_removed(table: str, env_prefix: str, data: Any) -> Any:
    """Refuse a key that was removed (from the file or the environment), without echoing its value."""
    for (t, key), message in REMOVED.items():
        if t == table and ((isinstance(data, dict) and key in data) or os.environ.get(env_prefix + key.upper())):
            raise ValueError(message)
    return data


def _check_token(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) < TOKEN_MIN_CHARS or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError(f"a token must be at least {TOKEN_MIN_CHARS} printable ASCII characters without spaces "
                         "(make one with: openssl rand -hex 24)")
    return value


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
    status_listen: str = Field(
        "127.0.0.1:9092", description="HTTP address of the status page; empty disables. Open on loopback; anywhere "
                                      "else it takes the viewer or operator token (and needs one to start)")
    log_format: LogFormat = Field("text", description="stderr log lines: text, or json (one object a line, "
                                  "to ship)")
    db_path: Path = Field(DEFAULT_STATE_DIR / "server.db", description="SQLite database (WAL)")
    shoes_token: str | None = Field(
        None, description="bearer token of the myshoes side, good for ShoesService only (the plugin sends it as "
                          "SHOESVZ_TOKEN); unset: ShoesService is open (loopback only)")
    enrollment_token: str | None = Field(
        None, description="bearer token an agent sends once to enrol (agent.enrollment_token); it buys that agent "
                          "its own secret, and can never take over an enrolled agent id; unset: anyone may enrol "
                          "(loopback only)")
    operator_token: str | None = Field(
        None, description="bearer token of operators: AdminService (shoes-vz agents, runners, drain, undrain, delete) "
                          "and the status page; unset: on loopback anyone may call AdminService, elsewhere nobody")
    viewer_token: str | None = Field(
        None, description="bearer token of read-only viewers: AdminService's lists and the status page; unset: on "
                          "loopback anyone may read them, elsewhere only the operator")
    tls_cert: Path | None = Field(None, description="PEM certificate chain for gRPC TLS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    allow_plaintext: bool = Field(False, description="allow plaintext gRPC on a non-loopback address")
    default_resource_type: str = Field(
        "small", description="the type myshoes' `Unknown` becomes (one of nano … 4xlarge)"
    )
    resource_types: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="myshoes type → template name; empty: each template's own resource_types decide",
    )
    add_instance_timeout: float = Field(300.0, gt=0, description="upper bound of one AddInstance call")
    sync_interval: float = Field(5.0, gt=0, description="agent heartbeat period, seconds")
    agent_offline_after: float = Field(20.0, gt=0, description="no heartbeat for this long → offline")
    command_resend_after: float = Field(10.0, gt=0, description="re-send an unacked command after")
    reap_after_agent_gone: float = Field(
        3600.0, ge=0, description="an agent gone (no Sync stream) this long has its runners reaped: gone in the "
        "database, so myshoes' deletes answer NOT_FOUND, and torn down if it comes back (server/reaper.py); longer "
        "than an agent restart, upgrade or host reboot; counted from this server's start at the earliest; 0: never")
    history_keep: int = Field(
        10_000, ge=0, description="gone runners whose rows (state, error, reap reason, timings) the database keeps "
                                  "for `shoes-vz runners --all` and the status page, newest first; older ones are "
                                  "forgotten (about 0.6 KiB each); 0 keeps none")
    history_max_age: float = Field(30 * 86400.0, gt=0, description="seconds a gone runner's row is kept at most")

    _hostport = field_validator("listen")(_check_hostport)
    _tokens = field_validator(*SERVER_TOKENS)(_check_token)

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return _refuse_removed("server", "SHOESVZ_SERVER_", data)

    @model_validator(mode="after")
    def _distinct_tokens(self) -> ServerSettings:
        given = [name for name in SERVER_TOKENS if getattr(self, name)]
        for i, a in enumerate(given):
            for b in given[i + 1:]:
                if getattr(self, a) == getattr(self, b):
                    raise ValueError(f"{a} and {b} are the same token: each role needs its own")
        return self

    @field_validator("metrics_listen", "status_listen")
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

    def open_roles(self) -> list[str]:
        """The tokens left unset that leave a door open to anyone who can connect."""
        return [name for name in ("shoes_token", "enrollment_token") if not getattr(self, name)]

    def check_transport(self) -> None:
        """Never unauthenticated off loopback; plaintext there only when asked for (docs/security.md §6)."""
        host, _ = split_hostport(self.listen)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("server: tls_cert and tls_key must be given together")
        if self.status_listen and not is_loopback(split_hostport(self.status_listen)[0]):
            if not (self.viewer_token or self.operator_token):
                raise ConfigError(f"server: refusing to serve the status page on {self.status_listen} to anyone: set "
                                  "server.viewer_token (or operator_token), or bind it to loopback (status_listen)")
            if not self.tls_cert and not self.allow_plaintext:
                raise ConfigError(f"server: refusing a plaintext status page on {self.status_listen}: set "
                                  "tls_cert/tls_key, bind it to loopback, or set allow_plaintext = true")
        if is_loopback(host):
            return
        if self.open_roles():
            raise ConfigError(
                f"server: refusing to listen on {self.listen} without authentication: set "
                f"{' and '.join('server.' + r for r in self.open_roles())} (or bind to loopback)")
        if not self.tls_cert and not self.allow_plaintext:
            raise ConfigError(
                f"server: refusing plaintext gRPC on {self.listen}: set tls_cert/tls_key, bind to "
                "loopback, or set allow_plaintext = true"
            )


class AdminSettings(_Base):
    """What `shoes-vz agents`, `runners`, `drain`, `undrain` and `delete` use to reach the server."""

    model_config = SettingsConfigDict(env_prefix="SHOESVZ_ADMIN_", extra="forbid")
    _table: ClassVar[str] = "admin"

    server_addr: str = Field("127.0.0.1:50051", description="the server's gRPC address (server.listen)")
    token: str | None = Field(
        None, description="the server's operator_token (everything) or viewer_token (agents and runners only); "
                          "unset: none is sent (enough on loopback when the server has no operator_token)")
    tls_ca: Path | None = Field(None, description="CA bundle to verify the server; enables TLS")
    timeout: float = Field(10.0, gt=0, description="seconds one call may take")

    _hostport = field_validator("server_addr")(_check_hostport)
    _token = field_validator("token")(_check_token)


def _default_driver() -> str:
    """vz on macOS, sim elsewhere"""
    return "vz" if sys.platform == "darwin" else "sim"


class AgentSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="SHOESVZ_AGENT_", extra="forbid")
    _table: ClassVar[str] = "agent"

    server_addr: str = Field("127.0.0.1:50051", description="the server's gRPC address")
    enrollment_token: str | None = Field(
        None, description="the server's enrollment_token: sent once, to enrol this host; the agent then keeps its "
                          "own secret in <state_dir>/agent-secret (0600) and sends that")
    tls_ca: Path | None = Field(None, description="CA bundle to verify the server; enables TLS")
    state_dir: Path = Field(DEFAULT_STATE_DIR, description="agent id and secret, SSH user CA live here (0700)")
    templates_dir: Path = Field(DEFAULT_TEMPLATES_DIR, description="frozen templates, with .drafts/ and .warm/")
    runners_dir: Path = Field(
        DEFAULT_RUNNERS_DIR, description="one clone per runner; on the same clone-capable volume as templates_dir"
    )
    runner_state_file: Path = Field(
        DEFAULT_RUNNER_STATE_FILE, description="JSON view of this host's runners, rewritten on every change (status)"
    )
    lease_file: Path = Field(DEFAULT_LEASE_FILE, description="bootpd's lease file (sim: written by sim VMs)")
    driver: str = Field(
        default_factory=_default_driver, description="vz (Virtualization.framework) or sim (sshd stands in for a VM)"
    )
    driver_options: dict[str, Any] = Field(
        default_factory=dict, description="the driver's own options, passed to `vm run` as they are "
        "([agent.driver_options]; sim: mode, subnet, pool_size, lease_seconds, dhcp_release, ...)")
    max_runners: int = Field(2, ge=1, le=64, description="VMs at once; Apple allows 2 macOS guests")
    host_vm_limit: int = Field(
        HOST_VM_LIMIT, ge=1, le=64,
        description="VMs at once on this host across every shoes-vz process (runners, template warm, freeze "
                    "--boot, template create); each holds one lock of vm_slots_dir. Apple allows 2 macOS guests")
    vm_slots_dir: Path | None = Field(None, description="the host-wide VM slot locks; default <state_dir>/vm-slots")
    notify_listen: str = Field("0.0.0.0:8081", description="IP-notify HTTP server (guest-facing)")
    notify_url: str = Field(
        "", description="URL guests POST to; default http://<gateway>:<notify port>/notify-ip"
    )
    metrics_listen: str = Field("127.0.0.1:9091", description="agent /metrics; empty disables")
    log_format: LogFormat = Field("text", description="stderr log lines: text, or json (one object a line, "
                                  "to ship)")
    runner_agent_port: int = Field(8080, description="port of the runner-agent in the guest (/health, /status)")
    boot_to_ip_timeout: float = Field(180.0, gt=0, description="seconds from VM start to the guest's address")
    ip_to_ssh_timeout: float = Field(60.0, gt=0, description="seconds from the address to SSH with the pinned key")
    create_timeout: float = Field(300.0, gt=0, description="seconds from clone to SSH-ready, all steps together")
    stop_grace: float = Field(10.0, ge=0, description="seconds between a stop request and a hard stop")
    guest_poll_interval: float = Field(2.0, gt=0, description="seconds between reads of the guest's /status")
    allow_copy: bool = Field(False, description="DEV ONLY: full copy when the volume cannot clone")
    sim_boot_delay: float = Field(0.0, ge=0, description="sim: seconds a guest takes to 'boot'")
    sim_restore_delay: float = Field(0.0, ge=0, description="sim: seconds a restore from State.save takes")
    use_warm_slots: bool = Field(True, description="restore runners from free warm slots when there are any")
    # runners torn down without myshoes (agent/reaper.py); 0 turns a rule off
    reap_finished_after: float = Field(
        600.0, ge=0, description="seconds after the guest's runner FINISHED that the agent tears it down itself; "
        "myshoes deletes a completed runner within its 1-minute loop, so its own delete normally wins")
    registration_timeout: float = Field(
        900.0, ge=0, description="seconds from creation within which the guest's runner must reach IDLE "
        "(registered with GitHub), else it is torn down; above myshoes' strict-mode 5 minutes")
    max_lifetime: float = Field(
        5 * 86400.0 + 3600.0, ge=0, description="seconds a runner may live at all; GitHub lets a job on a "
        "self-hosted runner run 5 days, so the default (5 days + 1 h) never ends a job GitHub would still run")
    degraded_probe_after: float = Field(
        30.0, gt=0, description="a degraded host (the framework refused a VM below its limit) starts a probe VM "
        "after this many seconds, then twice as long each time up to 10 minutes, and is back in service once one "
        "starts (agent/degraded.py)")
    disk_reserve: int | None = Field(
        None, ge=0, description="bytes the runners volume must have free before a clone (else the host is out of "
        "placement until it has); default: the largest template's disk size, enough for one disk to fill")
    mac_recycling: bool = Field(
        True, description="cold runners reuse this host's MACs (<state_dir>/mac-pool.json) once their VMs are gone, "
                          "so bootpd's leases stay few; off: a fresh MAC per runner (about 253 a lease time)")
    restore_timeout: float = Field(60.0, gt=0, description="vz: a restore + resume that takes longer boots cold")
    restore_live_timeout: float = Field(
        30.0, ge=0, description="vz: a restored guest that does not answer on vsock this long boots cold (0: no check)")
    restore_announce_timeout: float = Field(
        30.0, gt=0, description="a restored runner whose guest does not answer the host's re-announce (over the runner "
                                "channel) this long boots cold with a fresh identity")
    ssh_cert_ttl: float = Field(
        300.0, ge=30, le=3600, description="seconds a runner's SSH certificate (from the agent's user CA in state_dir) "
                                           "is valid; the agent needs it only until the setup_script has started")
    evidence_keep: int = Field(
        50, ge=0, description="runners whose evidence (VM log, RuntimeMetadata.json, the agent's record) stays in "
                              "<state_dir>/evidence after they failed, newest first; 0 keeps none")
    evidence_max_age: float = Field(7 * 86400.0, gt=0, description="seconds a runner's evidence is kept")
    evidence_for_every_runner: bool = Field(
        False, description="keep evidence for runners that did not fail too (`shoes-vz up --keep` does)")

    _token = field_validator("enrollment_token")(_check_token)

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        return _refuse_removed("agent", "SHOESVZ_AGENT_", data)

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

    def effective_vm_slots_dir(self) -> Path:
        return self.vm_slots_dir or vm_slots_dir(self.state_dir)

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
            if not err["loc"]:  # the whole table's: its input is every value, tokens too — never echoed
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            where = ".".join(str(p) for p in err["loc"])
            secret = where.endswith("token")
            lines.append(f"{cls._table}.{where}: {err['msg']}" + ("" if secret else f" (got {err.get('input')!r})"))
        sep = " " if len(lines) == 1 else "\n  "  # one problem, one line
        raise ConfigError(f"invalid {cls._table} configuration:{sep}" + sep.join(lines)) from None
    except Exception as e:  # a TOML syntax error, or an environment value pydantic-settings cannot parse
        where = f"configuration {path}" if path is not None else f"{cls._table} settings from the environment"
        raise ConfigError(f"cannot read {where}: {e}") from e
    finally:
        cls._config_file = None
