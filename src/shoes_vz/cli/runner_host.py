"""`shoes-vz ssh RUNNER` and `shoes-vz logs RUNNER`: on the agent host, a runner's shell and what it wrote.

Both read the agent's configuration (`-c`, `SHOESVZ_AGENT_*`) and what the agent publishes
(agent/runner_access.py): the runner's own credential and pinned host key, its VM log — live, or kept
as evidence once a failed runner is gone — and its setup_script log from the guest while it runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoes_vz.cli.console import err, fail, out
from shoes_vz.cli.options import ConfigOpt, agent_settings
from shoes_vz.core.errors import ConfigError, ShoesVzError

if TYPE_CHECKING:
    from shoes_vz.agent.runner_access import SSHAccess

RunnerArg = Annotated[str, typer.Argument(metavar="RUNNER", help="runner id or name (`shoes-vz status` lists them)")]


@contextlib.contextmanager
def ssh_command(access: SSHAccess, *command: str, tty: bool = False) -> Iterator[list[str]]:
    """OpenSSH's argv for `access`: this runner's certificate only, its pinned host key only, no agent, no config."""
    binary = shutil.which("ssh")
    if binary is None:
        raise ConfigError("no `ssh` on this host's PATH (OpenSSH's client)")
    with tempfile.TemporaryDirectory(prefix="shoes-vz-ssh-") as d:  # 0700: this user's only
        known = Path(d) / "known_hosts"
        known.write_text(access.known_hosts_line())
        key = Path(d) / "id"  # a key for this login alone, with its certificate beside it (OpenSSH's naming)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(access.client_key)
        (Path(d) / "id-cert.pub").write_bytes(access.certificate)
        yield [binary, "-F", "/dev/null", "-i", str(key), "-p", str(access.port),
               "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
               "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
               *(["-t"] if tty else []), f"{access.user}@{access.host}", *command]


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace")
    return text if lines <= 0 else "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")


def _section(title: str) -> None:
    out.print(f"==> {title} <==", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def ssh(ctx: typer.Context, runner: RunnerArg, config: ConfigOpt = None) -> None:
        """SSH into a runner of this host with the runner's own credential and its pinned host key.

        Anything after RUNNER (after `--`) runs as a command in the guest instead of a shell.
        """
        from shoes_vz.agent.runner_access import find_runner, ssh_access

        try:
            settings = agent_settings(config)
            access = ssh_access(settings, find_runner(settings, runner))
            with ssh_command(access, *ctx.args) as argv:
                code = subprocess.run(argv, check=False).returncode
        except ShoesVzError as e:
            raise fail(e) from None
        raise typer.Exit(code)

    @app.command()
    def logs(runner: RunnerArg, config: ConfigOpt = None,
             agent_log: Annotated[list[Path] | None, typer.Option(
                 help="the agent's log file (its service's stdout/stderr); its lines about RUNNER are shown")] = None,
             lines: Annotated[int, typer.Option("--lines", "-n", help="last lines of each log; 0: all")] = 200,
             ) -> None:
        """A runner's VM log, its setup_script log from the guest (while it runs) and the agent's lines about it;
        also for a failed runner that is gone (the evidence the agent keeps, agent.evidence_keep)."""
        from shoes_vz.agent.runner_access import SETUP_LOG, find_runner, ssh_access

        try:
            settings = agent_settings(config)
            found = find_runner(settings, runner)
        except ShoesVzError as e:
            raise fail(e) from None
        r = found.record
        out.print(f"runner {found.runner_id} ({found.name}): {r.get('state', '?')}"
                  f"{'' if found.live else ', gone (kept evidence)'}"
                  f"{'; error: ' + str(r['error']) if r.get('error') else ''}", markup=False, highlight=False)
        _section(f"VM log: {found.vm_log or 'none kept'}")
        if found.vm_log is not None and found.vm_log.exists():
            out.print(_tail(found.vm_log, lines), end="", markup=False, highlight=False)
        _section("setup_script log (in the guest)")
        if not found.live:
            out.print("(the guest is gone)", markup=False)
        else:
            try:
                with ssh_command(ssh_access(settings, found), f"tail -n {lines or '+1'} {SETUP_LOG}") as argv:
                    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
                out.print(done.stdout if done.returncode == 0 else f"(cannot read it: {done.stderr.strip()})",
                          end="" if done.returncode == 0 else "\n", markup=False, highlight=False)
            except (ShoesVzError, subprocess.TimeoutExpired) as e:
                out.print(f"(cannot read it: {e})", markup=False, highlight=False)
        for path in agent_log or []:
            _section(f"agent log: {path}")
            try:
                text = path.read_text(errors="replace")
            except OSError as e:
                err.print(f"cannot read {path}: {e.strerror}", markup=False)
                continue
            mine = [ln for ln in text.splitlines() if found.runner_id in ln]
            out.print("\n".join(mine[-lines:] if lines > 0 else mine), markup=False, highlight=False)
        if not agent_log:
            out.print("(agent lines: give --agent-log FILE, the agent's log)", markup=False)


__all__ = ["register", "ssh_command"]
