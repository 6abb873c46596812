"""`shoes-vz template …`: init-sim, import-tart, freeze, verify, list, edit (registered by cli/main.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from shoes_vz.cli.console import err, fail, out
from shoes_vz.cli.options import ConfigOpt, RunnersDirOpt, TemplatesDirOpt, agent_settings
from shoes_vz.core.errors import ShoesVzError

if TYPE_CHECKING:
    from shoes_vz.config import AgentSettings

NameArg = Annotated[str, typer.Argument(help="template name (letters, digits, '.', '_', '-')")]
CopyOpt = Annotated[bool, typer.Option("--copy", help="full copy where a clone is impossible (slow; dev only; "
                                                      "also on when the agent's allow_copy is)")]
GIB = 1024**3


def _types(value: str) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] or None


@contextlib.contextmanager
def _bar(console: Console, what: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar fed with (done, total) bytes."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _boot_probe(settings: AgentSettings) -> Callable[[Path], str]:
    """`freeze --boot`: boot a clone of the draft with the agent's settings and read its host key."""
    import asyncio

    from shoes_vz.agent.host_key import probe_host_key

    def probe(draft_dir: Path) -> str:
        with err.status(f"booting a clone of {draft_dir.name} ({settings.driver}) to read its SSH host key"):
            return asyncio.run(probe_host_key(settings, draft_dir))

    return probe


def register(app: typer.Typer) -> None:

    @app.command("init-sim")
    def init_sim_cmd(
        name: NameArg,
        config: ConfigOpt = None,
        templates_dir: TemplatesDirOpt = None,
        resource_types: Annotated[str, typer.Option(help="comma-separated types served")] = "",
        disk_gib: Annotated[int, typer.Option(min=1, help="sparse Disk.img size")] = 64,
    ) -> None:
        """Make a sim template (simulated guest) with the seed's layout, frozen read-only."""
        from shoes_vz.template import init_sim

        try:
            templates = agent_settings(config, templates_dir=templates_dir).templates_dir
            t = init_sim(templates, name, resource_types=_types(resource_types), disk_bytes=disk_gib * GIB)
        except (ShoesVzError, OSError) as e:
            raise fail(e) from None
        out.print(f"template [bold]{t.name}[/] at {t.path} serves {', '.join(t.meta.resource_types)}")

    @app.command("import-tart")
    def import_tart_cmd(
        src: Annotated[Path, typer.Argument(help="tart VM directory, e.g. ~/.tart/vms/NAME")],
        name: NameArg,
        config: ConfigOpt = None,
        templates_dir: TemplatesDirOpt = None,
        cpu: Annotated[int | None, typer.Option(min=1, help="vCPUs (default: tart's cpuCount)")] = None,
        memory_gib: Annotated[int | None, typer.Option(min=1, help="memory (default: tart's memorySize)")] = None,
        resource_types: Annotated[str, typer.Option(help="comma-separated types served")] = "",
        copy: CopyOpt = False,
    ) -> None:
        """Import a stopped tart VM as the draft NAME (clones its disk and NVRAM; fresh identity per runner)."""
        from shoes_vz.template import TemplateStore, import_tart

        if copy:
            err.print("[yellow]warning:[/] --copy: where the tart VM cannot be cloned, its disk is copied in "
                      "full (slow; costs the disk's full size)")
        try:
            settings = agent_settings(config, templates_dir=templates_dir)
            with _bar(err, "copying") as progress:
                d = import_tart(src, TemplateStore(settings.templates_dir), name, cpu_count=cpu,
                                memory_bytes=memory_gib * GIB if memory_gib else None,
                                resource_types=_types(resource_types), copy=copy or settings.allow_copy,
                                progress=progress)
        except (ShoesVzError, OSError) as e:
            raise fail(e) from None
        m = d.meta
        out.print(f"draft [bold]{m.name}[/] v{m.version} at {d.path} ({m.cpu_count} cpu, "
                  f"{m.memory_bytes / GIB:.0f} GiB, disk {m.disk_bytes / GIB:.0f} GiB); next: "
                  f"shoes-vz template freeze {m.name} --host-key KEY")

    @app.command()
    def freeze(
        name: NameArg,
        config: ConfigOpt = None,
        templates_dir: TemplatesDirOpt = None,
        runners_dir: RunnersDirOpt = None,
        host_key: Annotated[str | None, typer.Option(
            help="guest SSH host public key: the 'ssh-ed25519 AAAA…' line or a .pub file")] = None,
        boot: Annotated[bool, typer.Option(
            "--boot", help="read the host key off a scratch boot of the draft (a clone; the agent's "
                           "driver, lease file and runners dir)")] = False,
    ) -> None:
        """Pin the host key, record digests, make the draft NAME read-only and publish it.

        An older version is replaced only when no live VM uses it: the agent's runners directory is
        checked, and a version any VM holds (a runner, a warm slot being built) is never replaced.
        """
        from shoes_vz.template import TemplateStore
        from shoes_vz.template import freeze as do_freeze

        try:
            settings = agent_settings(config, templates_dir=templates_dir, runners_dir=runners_dir)
            probe = _boot_probe(settings) if boot else None
            with _bar(err, "digesting") as progress:
                t = do_freeze(TemplateStore(settings.templates_dir), name, runners_dir=settings.runners_dir,
                              host_key=host_key, host_key_probe=probe, progress=progress)
        except (ShoesVzError, OSError) as e:
            raise fail(e) from None
        out.print(f"template [bold]{t.name}[/] v{t.meta.version} frozen at {t.path} "
                  f"(host key {t.meta.ssh_host_key.split()[0]}, {len(t.meta.digests)} files digested)")
        stale = sorted(p.name for p in (settings.templates_dir / ".warm" / t.name).glob("*")
                       if p.name != t.meta.version)
        if stale:
            err.print(f"[yellow]note:[/] warm slots of {t.name} v{', v'.join(stale)} no longer fit and are not used; "
                      f"make new ones: shoes-vz template warm {t.name} --slots N")

    @app.command()
    def verify(name: NameArg, config: ConfigOpt = None, templates_dir: TemplatesDirOpt = None) -> None:
        """Check a frozen template: digests, modes, symlinks, pinned host key. Exit 1 listing problems."""
        from shoes_vz.template import TemplateStore
        from shoes_vz.template import verify as do_verify

        try:
            templates_dir = agent_settings(config, templates_dir=templates_dir).templates_dir
            path = TemplateStore(templates_dir).path(name)
            if not path.is_dir():
                raise ShoesVzError(f"no template named {name!r} in {templates_dir}")
            with _bar(err, "verifying") as progress:
                result = do_verify(path, progress=progress)
        except (ShoesVzError, OSError) as e:
            raise fail(e) from None
        if result.ok:
            out.print(f"template [bold]{name}[/] is intact ({len(result.stat_keys)} files match their digests)")
            return
        err.print(f"[bold red]template {name} has {len(result.problems)} problem(s):[/]")
        for p in result.problems:
            err.print(f"  - {p}")
        err.print(f"fix: {result.fix}")
        raise typer.Exit(1)

    @app.command("list")
    def list_cmd(config: ConfigOpt = None, templates_dir: TemplatesDirOpt = None) -> None:
        """List frozen templates and drafts."""
        from shoes_vz.template import TemplateStore

        templates_dir = agent_settings(config, templates_dir=templates_dir).templates_dir
        table = Table("name", "version", "status", "driver", "macOS build", "cpu", "memory", "disk",
                      "resource types", "frozen at")
        table.title = str(templates_dir)
        for e in TemplateStore(templates_dir).entries():
            m = e.meta
            if m is None:
                table.add_row(e.path.name, "-", f"[red]{e.status}, broken[/]", "", "", "", "", "", e.error[:60], "")
                continue
            frozen = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.frozen_at)) if m.frozen_at else "-"
            table.add_row(m.name, m.version, e.status, m.driver, m.macos_build or "-", str(m.cpu_count),
                          f"{m.memory_bytes / GIB:.0f} GiB", f"{m.disk_bytes / GIB:.0f} GiB",
                          ", ".join(m.resource_types), frozen)
        out.print(table)

    @app.command()
    def edit(name: NameArg, config: ConfigOpt = None, templates_dir: TemplatesDirOpt = None,
             runners_dir: RunnersDirOpt = None, copy: CopyOpt = False) -> None:
        """Un-freeze NAME into a new writable draft (version + 1); the frozen one keeps serving."""
        from shoes_vz.template import TemplateStore
        from shoes_vz.template import edit as do_edit

        try:
            settings = agent_settings(config, templates_dir=templates_dir, runners_dir=runners_dir)
            d = do_edit(TemplateStore(settings.templates_dir), name, copy=copy or settings.allow_copy)
        except (ShoesVzError, OSError) as e:
            raise fail(e) from None
        out.print(f"draft [bold]{name}[/] v{d.meta.version} (from v{d.meta.parent_version}) at {d.path}; "
                  f"when done: shoes-vz template freeze {name}")
        users = _users(settings, name, d.meta.parent_version or "")
        if users:
            err.print(f"[yellow]note:[/] v{d.meta.parent_version} is in use by {users}: `freeze` replaces it only "
                      "once no live VM uses it")


def _users(settings: AgentSettings, name: str, version: str) -> str:
    """What uses the frozen version now: live runners in the agent's runners directory, warm slots."""
    from shoes_vz.agent.warm import read_slots
    from shoes_vz.template import live_users

    runners = live_users(settings.runners_dir, settings.templates_dir / name)
    slots = read_slots(settings.templates_dir, name, version)
    parts = ([f"{len(runners)} live runner(s) ({', '.join(runners)})"] if runners else []) + (
        [f"{len(slots)} warm slot(s), which go stale with a new version"] if slots else [])
    return " and ".join(parts)
