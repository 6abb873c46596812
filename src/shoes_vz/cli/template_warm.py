"""`shoes-vz template warm NAME --slots N`: this host's warm slots for a template (DESIGN §12)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from shoes_vz.cli.console import err, fail, out
from shoes_vz.cli.options import ConfigOpt, RunnersDirOpt, TemplatesDirOpt, agent_settings
from shoes_vz.core.errors import ShoesVzError


def register(template_app: typer.Typer) -> None:
    @template_app.command("warm")
    def template_warm(
        name: Annotated[str, typer.Argument(help="the frozen template to warm")],
        slots: Annotated[int, typer.Option(help="warm slots to keep (≤ the agent's max_runners; 0 removes all)")],
        config: ConfigOpt = None,
        templates_dir: TemplatesDirOpt = None,
        runners_dir: RunnersDirOpt = None,
    ) -> None:
        """Build (or trim to) N saved VMs of template NAME that runners restore from instead of booting.

        Uses the agent's settings (driver, lease file, SSH key). Slots of older template versions and
        broken slots are removed, except while a live runner holds one.
        """
        from shoes_vz.agent.warm_build import SlotBuilder
        from shoes_vz.template import TemplateStore

        try:
            settings = agent_settings(config, templates_dir=templates_dir, runners_dir=runners_dir)
            template = TemplateStore(settings.templates_dir).get(name)
            builder = SlotBuilder(settings, template, lambda msg: err.print(msg, highlight=False))
            with err.status(f"warming {name} v{template.meta.version} ({settings.driver})"):
                report = asyncio.run(builder.ensure(slots))
        except ShoesVzError as e:
            raise fail(e) from None
        table = Table("slot", "state", "MAC", "IP", title=f"warm slots of {name} v{template.meta.version}")
        for s in report.kept:
            table.add_row(str(s.path), "kept", str(s.mac), s.ip)
        for s in report.built:
            table.add_row(str(s.path), "built", str(s.mac), s.ip)
        for p in report.removed:
            table.add_row(str(p), "removed", "", "")
        for p in report.busy:
            table.add_row(str(p), "stale, held by a live runner (kept)", "", "")
        out.print(table)
