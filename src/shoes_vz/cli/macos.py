"""`shoes-vz doctor` and `shoes-vz sign-python` (registered by cli/main.py through `register`)."""

from __future__ import annotations

import typer
from rich.table import Table

from shoes_vz.cli.console import fail, out
from shoes_vz.cli.options import ConfigOpt, RunnersDirOpt, TemplatesDirOpt, agent_settings
from shoes_vz.core.errors import ShoesVzError

_STYLE = {"ok": "green", "warn": "yellow", "fatal": "bold red"}


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        config: ConfigOpt = None,
        templates_dir: TemplatesDirOpt = None,
        runners_dir: RunnersDirOpt = None,
    ) -> None:
        """Check that this host can run vz VMs; exit 1 when a check is fatal."""
        from shoes_vz.macos.doctor import Probes, has_fatal, run_checks

        s = agent_settings(config, templates_dir=templates_dir, runners_dir=runners_dir)
        checks = run_checks(Probes(), s.templates_dir, s.runners_dir, lease_file=s.lease_file,
                            mac_recycling=s.mac_recycling)
        table = Table("check", "result", "details", "fix")
        for c in checks:
            table.add_row(c.name, f"[{_STYLE[c.level.value]}]{c.level.value}[/]", c.message, c.fix)
        out.print(table)
        fatal = has_fatal(checks)
        warns = sum(c.level.value == "warn" for c in checks)
        out.print("[bold red]FATAL: the vz driver cannot run here[/]" if fatal
                  else f"[green]ready[/] ({warns} warning{'s' if warns != 1 else ''})")
        if fatal:
            raise typer.Exit(1)

    @app.command("sign-python")
    def sign_python_cmd() -> None:
        """Ad-hoc sign the image this interpreter runs with com.apple.security.virtualization, then check
        it from a new interpreter process. Re-run it after every interpreter upgrade."""
        import os

        from shoes_vz.macos.doctor import vm_user
        from shoes_vz.macos.interpreter import record_path
        from shoes_vz.macos.sign import sign_python

        user = vm_user(os.geteuid(), os.environ.get("SUDO_USER"))
        try:
            result = sign_python(record=record_path(user.home) if user is not None else None)
        except ShoesVzError as e:
            raise fail(e) from None
        for argv in result.commands:
            out.print(f"[dim]$ {' '.join(argv)}[/]")
        out.print(result.describe())
