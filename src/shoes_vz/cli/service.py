"""`shoes-vz service install|uninstall server|agent`: launchd (macOS) or systemd (Linux) files.

`install` writes the file (and, for systemd, an empty environment file 0600 if there is none) and
prints the one command that loads it; `--dry-run` prints the file and touches nothing. `uninstall`
prints the command that unloads it, then removes the file. The shapes: service_files.py.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoes_vz.cli.console import fail, out
from shoes_vz.core.errors import ConfigError, ShoesVzError

if TYPE_CHECKING:
    from shoes_vz.service_files import ServiceFile

service_app = typer.Typer(help="Run the server or the agent as a service (launchd on macOS, systemd on Linux).",
                          no_args_is_help=True)


class Role(StrEnum):
    server = "server"
    agent = "agent"


class Platform(StrEnum):
    macos = "macos"
    linux = "linux"


RoleArg = Annotated[Role, typer.Argument(help="server or agent")]
PlatformOpt = Annotated[Platform | None, typer.Option(
    help="the kind of file: macos (launchd) or linux (systemd); default: this host's")]
UserOpt = Annotated[str | None, typer.Option(
    help="the user it runs as; default: you (the invoking user under sudo)")]
ServiceConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="the TOML file the service reads; default: ~/.shoes-vz/shoes-vz.toml (macOS), "
    "/etc/shoes-vz/shoes-vz.toml (Linux)")]
DestOpt = Annotated[Path | None, typer.Option(
    help="write into this directory instead of the system's (to review, or to stage for a deploy)")]


def register(app: typer.Typer) -> None:
    app.add_typer(service_app, name="service")


def _default_config(platform: Platform, home: Path) -> Path:
    return home / ".shoes-vz" / "shoes-vz.toml" if platform is Platform.macos else Path("/etc/shoes-vz/shoes-vz.toml")


def _file(role: Role, platform: Platform | None, user: str | None, config: Path | None,
          dest: Path | None) -> tuple[ServiceFile, Path]:
    from shoes_vz.service_files import ServiceUser, launchd, systemd

    platform = platform or (Platform.macos if sys.platform == "darwin" else Platform.linux)
    sudo_user = os.environ.get("SUDO_USER") if os.geteuid() == 0 else None
    who = ServiceUser.named(user or sudo_user or pwd.getpwuid(os.geteuid()).pw_name)
    cfg = (config or _default_config(platform, who.home)).absolute()
    if platform is Platform.macos:
        f = launchd(role.value, cfg, who)
    else:
        f = systemd(role.value, cfg, who, Path("/etc/shoes-vz") / f"{role.value}.env")
    if dest is not None:  # staged: the same content (naming its final paths), in another directory
        f = dataclasses.replace(f, path=dest.absolute() / f.path.name,
                    env_file=dest.absolute() / f.env_file.name if f.env_file else None)
    return f, cfg


@service_app.command()
def install(
    role: RoleArg,
    config: ServiceConfigOpt = None,
    platform: PlatformOpt = None,
    user: UserOpt = None,
    dest: DestOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the file; write nothing")] = False,
) -> None:
    """Write the launchd property list or systemd unit for the server or the agent."""
    try:
        f, cfg = _file(role, platform, user, config, dest)
        if dry_run:
            sys.stdout.write(f.content.decode())
            return
        if f.path.exists() and f.path.read_bytes() != f.content:
            raise ConfigError(f"{f.path} exists and differs: `shoes-vz service uninstall {role.value}` first "
                              f"(or compare with --dry-run)")
        f.path.parent.mkdir(parents=True, exist_ok=True)
        if dest is None:
            f.log_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.path.with_name(f.path.name + ".tmp")
        tmp.write_bytes(f.content)
        tmp.chmod(0o644)
        os.replace(tmp, f.path)
        if f.env_file is not None and not f.env_file.exists():
            f.env_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as env:
                env.write(f"# SHOESVZ_{role.value.upper()}_* settings for the {role.value} service, e.g. tokens "
                          f"(README: configuration)\n")
    except (ShoesVzError, OSError) as e:
        raise fail(e) from None
    out.print(f"wrote {f.path} (config {cfg}, log {f.log_file}"
              + (f", environment {f.env_file}" if f.env_file else "") + ")", markup=False, highlight=False)
    out.print("load it: " + " ".join(f.load), markup=False, highlight=False)


@service_app.command()
def uninstall(
    role: RoleArg,
    platform: PlatformOpt = None,
    user: UserOpt = None,
    dest: DestOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would go; remove nothing")] = False,
) -> None:
    """Remove the service's file (unload it first: the command is printed); the environment file stays."""
    try:
        f, _ = _file(role, platform, user, None, dest)
        if not f.path.exists():
            raise ConfigError(f"{f.path} does not exist: nothing to uninstall")
        out.print("unload it first: " + " ".join(f.unload), markup=False, highlight=False)
        if dry_run:
            out.print(f"would remove {f.path}", markup=False, highlight=False)
            return
        f.path.unlink()
    except (ShoesVzError, OSError) as e:
        raise fail(e) from None
    out.print(f"removed {f.path}", markup=False, highlight=False)
