"""Options every command spells the same way, and the one helper that loads the agent's settings.

Every command that touches templates, runners or the state file reads the agent's configuration —
`-c/--config` (or `SHOESVZ_CONFIG`), the `SHOESVZ_AGENT_*` environment, then its own flags on top —
so an operator configures the paths once (config.py states the precedence).
"""

from __future__ import annotations

from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from shoes_vz.config import AgentSettings

# `\[` keeps rich from reading the table names as markup (it rendered "TOML file (/ tables)")
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="SHOESVZ_CONFIG", show_envvar=True,
    help=r"TOML file with the \[server] and \[agent] tables (environment and flags override it)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


class LogFormatName(StrEnum):
    text = "text"
    json = "json"


LogFormatOpt = Annotated[LogFormatName | None, typer.Option(
    "--log-format", help="stderr log lines: text, or json to ship (server./agent.log_format)")]
TemplatesDirOpt = Annotated[Path | None, typer.Option(
    help="templates directory (default: the agent's templates_dir)")]
RunnersDirOpt = Annotated[Path | None, typer.Option(
    help="runner bundles, i.e. live VMs (default: the agent's runners_dir)")]


class DriverName(StrEnum):
    """The VM drivers (vm/drivers): a refused value lists these."""

    sim = "sim"
    vz = "vz"


DriverOpt = Annotated[DriverName | None, typer.Option(
    help="VM driver: vz (Virtualization.framework) or sim (simulated guest); default: the agent's driver")]


def agent_settings(config: Path | None, **flags: Any) -> AgentSettings:
    """The agent's settings as the agent itself would load them; flags given (not None) override."""
    from shoes_vz import config as cfg

    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in flags.items()}
    return cfg.load(cfg.AgentSettings, config, **values)


def choice(value: str, valid: dict[str, str], what: str) -> str:
    """`valid[value]` (case-insensitive), or a usage error that lists every valid name."""
    found = {k.lower(): v for k, v in valid.items()}.get(value.strip().lower())
    if found is None:
        raise typer.BadParameter(f"{value!r} is not {what}; valid: {', '.join(valid)}")
    return found
