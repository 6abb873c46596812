"""`shoes-vz template create NAME --ipsw PATH|latest`: install macOS into a new template draft.

The draft is built in `<templates_dir>/.drafts/.NAME.tmp-<pid>` and renamed to
`<templates_dir>/.drafts/NAME` only once macOS is installed and TemplateMetadata.json is written; on
any failure or Ctrl-C the temporary directory is removed, so a draft either exists whole or not at
all (the shared `.drafts` directory itself stays). The draft is not served: its `ssh_host_key` is
empty until `template freeze` pins it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from shoes_vz.cli.console import err, fail, out
from shoes_vz.cli.options import ConfigOpt, TemplatesDirOpt, agent_settings
from shoes_vz.core.errors import Interrupted, InvalidInput, ShoesVzError, TemplateError
from shoes_vz.core.resources import RESOURCE_TYPES
from shoes_vz.core.sizes import format_size, parse_size

if TYPE_CHECKING:  # the rest loads when the command runs: every `shoes-vz` start (e.g. `vm run`) stays fast
    from rich.progress import Progress, TaskID

    from shoes_vz.macos.install import InstalledImage, InstallProgress
    from shoes_vz.vm.host_slots import HostSlots

DRAFTS = ".drafts"
DEFAULT_CACHE_DIR = Path("~/.cache/shoes-vz/ipsw")
PHASES = {"download": "downloading the IPSW", "load": "loading the restore image",
          "prepare": "disk, aux storage, hardware model", "install": "installing macOS"}


class RichInstallProgress:
    """`InstallProgress` drawn as one rich bar per phase."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def update(self, phase: str, fraction: float) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(PHASES.get(phase, phase), total=1.0)
        self._progress.update(self._tasks[phase], completed=fraction)


def _check_request(templates_dir: Path, name: str, resource_types: list[str]) -> Path:
    """The draft's final path, after refusing a bad name or one already taken."""
    from shoes_vz.template.store import NAME_OK

    if not name or not set(name) <= NAME_OK or name.startswith("."):
        raise TemplateError(f"template name {name!r} is invalid: use letters, digits, '.', '_', '-'")
    bad = [t for t in resource_types if t not in RESOURCE_TYPES]
    if bad:
        raise TemplateError(f"unknown resource types {bad}; expected some of {', '.join(RESOURCE_TYPES)}")
    if (templates_dir / name).exists():
        raise TemplateError(f"a template named {name!r} already exists ({templates_dir / name}); pick another "
                            "name, or make a new version of it with `template edit`")
    draft = templates_dir / DRAFTS / name
    if draft.exists():
        raise TemplateError(f"a draft named {name!r} already exists ({draft}); freeze or remove it first")
    return draft


def create_draft(templates_dir: Path, name: str, *, ipsw: str, cpu_count: int, memory_bytes: int,
                 disk_bytes: int, cache_dir: Path, resource_types: list[str],
                 progress: InstallProgress, host_slots: HostSlots) -> tuple[Path, InstalledImage]:
    """Install macOS into `<templates_dir>/.drafts/NAME` (whole, or not at all)."""
    from shoes_vz.macos.install import install_macos, require_virtualization
    from shoes_vz.template.metadata import FILE_NAME, TemplateMetadata

    draft = _check_request(templates_dir, name, resource_types)
    require_virtualization()  # before anything is written: on Linux this is where we stop
    draft.parent.mkdir(parents=True, exist_ok=True)
    tmp = draft.parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run with our pid
    tmp.mkdir()
    try:
        image = install_macos(tmp, ipsw=ipsw, cpu_count=cpu_count, memory_bytes=memory_bytes,
                              disk_bytes=disk_bytes, cache_dir=cache_dir, progress=progress, host_slots=host_slots)
        meta = TemplateMetadata(name=name, driver="vz", version="1", macos_build=image.macos_build,
                                cpu_count=image.cpu_count, memory_bytes=image.memory_bytes,
                                disk_bytes=image.disk_bytes, resource_types=resource_types, ssh_host_key="")
        (tmp / FILE_NAME).write_text(meta.to_json())
        (tmp / "README.md").write_text(
            f"# {name} (draft)\n\nmacOS {image.macos_version} ({image.macos_build}) installed by "
            f"`shoes-vz template create` from {image.ipsw.name}.\nNot served until frozen: boot it, enable "
            "SSH for the `runner` user, install the runner-agent, then `shoes-vz template freeze`.\n")
        if draft.exists():
            raise TemplateError(f"a draft named {name!r} appeared at {draft} meanwhile; keeping that one")
        os.rename(tmp, draft)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return draft, image


def register(template_app: typer.Typer) -> None:
    @template_app.command("create")
    def create(
        name: Annotated[str, typer.Argument(help="template name (letters, digits, '.', '_', '-')")],
        ipsw: Annotated[str, typer.Option(help="a local .ipsw, or 'latest' (the newest this host supports)")],
        cpu: Annotated[int, typer.Option(help="virtual CPUs the template's runners get")] = 4,
        memory: Annotated[str, typer.Option(help="guest memory, e.g. 8G, 8GiB, 8192M")] = "8G",
        disk: Annotated[str, typer.Option(help="sparse Disk.img size, e.g. 64G")] = "64G",
        config: ConfigOpt = None,
        templates_dir: TemplatesDirOpt = None,
        cache_dir: Annotated[Path, typer.Option(help="where downloaded IPSWs are kept")] = DEFAULT_CACHE_DIR,
        resource_types: Annotated[str, typer.Option(help="comma-separated myshoes types it will serve")] = "",
    ) -> None:
        """Install macOS from an IPSW into a new draft template (<templates-dir>/.drafts/NAME)."""
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        from shoes_vz.macos.install import require_virtualization
        from shoes_vz.macos.install_errors import InstallError
        from shoes_vz.vm.host_slots import HostSlots

        try:
            memory_bytes, disk_bytes = parse_size(memory), parse_size(disk)
        except InvalidInput as e:
            raise typer.BadParameter(str(e)) from None
        types = [t.strip() for t in resource_types.split(",") if t.strip()]
        settings = agent_settings(config, templates_dir=templates_dir)
        templates = settings.templates_dir
        columns = (TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        try:
            require_virtualization()  # fail before drawing a progress bar (e.g. on Linux)
            with Progress(*columns, console=err, transient=False) as bar:
                draft, image = create_draft(templates, name, ipsw=ipsw, cpu_count=cpu, memory_bytes=memory_bytes,
                                            disk_bytes=disk_bytes, cache_dir=cache_dir.expanduser(),
                                            resource_types=types, progress=RichInstallProgress(bar),
                                            host_slots=HostSlots(settings.effective_vm_slots_dir(),
                                                                 settings.host_vm_limit))
        except KeyboardInterrupt:
            raise Interrupted("nothing was kept (a partial IPSW download resumes next time)") from None
        except InstallError as e:
            exit_ = fail(e)
            err.print("[yellow]resumable[/]: re-run the same command once the cause is fixed" if e.resumable
                      else "not resumable: change the command or the host first")
            raise exit_ from None
        except (ShoesVzError, OSError) as e:
            raise fail(e) from None
        out.print(f"draft [bold]{name}[/] at {escape(str(draft))}: macOS {image.macos_version} ({image.macos_build}), "
                  f"{image.cpu_count} CPUs, {format_size(image.memory_bytes)} memory, "
                  f"{format_size(image.disk_bytes)} disk")
        out.print(f"next: boot it, set it up (SSH, runner user, runner-agent), then `shoes-vz template freeze {name}`")


__all__ = ["create_draft", "register"]
