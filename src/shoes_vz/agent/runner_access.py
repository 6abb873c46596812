"""How this host reaches one of its runners, and what a runner leaves behind: the one place that says
which SSH credential and which pinned host key belong to a runner — a certificate of the agent's user CA
for that runner alone (agent/ssh_ca.py) and the per-boot host key its VM's channel announced — and
where its VM log is, live or kept as evidence.

`shoes-vz ssh RUNNER` and `shoes-vz logs RUNNER` run on the agent host and read what the agent
publishes (runner-state.json), its templates and its evidence directory; they never talk to the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoes_vz.agent.evidence import LOG, RECORD
from shoes_vz.agent.ssh_ca import UserCA, source_address_toward
from shoes_vz.config import AgentSettings
from shoes_vz.core.errors import NotFound
from shoes_vz.template import TemplateStore
from shoes_vz.vm.bundle import Bundle

SETUP_LOG = '"${SHOESVZ_GUEST_HOME:-$HOME}/.shoes-vz/setup.log"'  # where agent/ssh.py's detached script writes


@dataclass(frozen=True)
class RunnerRecord:
    """The agent's record of a runner: live (runner-state.json) or gone (its evidence's runner.json)."""

    record: dict[str, Any]
    live: bool
    vm_log: Path | None

    @property
    def runner_id(self) -> str:
        return str(self.record.get("runner_id", ""))

    @property
    def name(self) -> str:
        return str(self.record.get("runner_name", ""))


@dataclass(frozen=True)
class SSHAccess:
    host: str
    port: int
    user: str
    client_key: bytes  # OpenSSH private key
    certificate: bytes  # its OpenSSH user certificate (one line)
    host_key: str  # the pinned public key, OpenSSH one-line form

    def known_hosts_line(self) -> str:
        where = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{where} {self.host_key.strip()}\n"


OPERATOR_CERT_TTL = 600.0  # seconds an operator's login certificate stays valid


def find_runner(settings: AgentSettings, ref: str) -> RunnerRecord:
    """A runner by id or name: a live one of this host first, then one whose evidence is kept."""
    for r in _live(settings):
        if ref in (r.get("runner_id"), r.get("runner_name")):
            return RunnerRecord(r, True, Bundle.for_runner(settings.runners_dir, str(r.get("runner_id"))).log_file)
    evidence = settings.state_dir / "evidence"
    candidates = [evidence / ref] if (evidence / ref).is_dir() else sorted(
        evidence.glob("*/" + RECORD), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        record_file = path / RECORD if path.is_dir() else path
        record = _read_json(record_file) or {"runner_id": record_file.parent.name}
        if ref in (record.get("runner_id"), record.get("runner_name"), record_file.parent.name):
            log = record_file.parent / LOG
            return RunnerRecord(record, False, log if log.exists() else None)
    raise NotFound(f"no runner {ref!r} on this host: not in {settings.runner_state_file} and no evidence kept in "
                   f"{evidence} (agent.evidence_keep; `shoes-vz runners --all` lists the fleet's)")


def ssh_access(settings: AgentSettings, runner: RunnerRecord) -> SSHAccess:
    """Address, credential and pinned host key of a live runner of this host."""
    r = runner.record
    if not runner.live:
        raise NotFound(f"runner {runner.runner_id} is gone (its VM no longer runs): `shoes-vz logs "
                       f"{runner.runner_id}` shows what it left")
    if not r.get("ip_address"):
        raise NotFound(f"runner {runner.runner_id} has no address yet (it is {r.get('state')})")
    host_key = str(r.get("ssh_host_key") or "")
    if not host_key:
        raise NotFound(f"runner {runner.runner_id} has not announced its host key yet (it is {r.get('state')})")
    template = TemplateStore(settings.templates_dir).get(str(r.get("template", "")))
    ip = str(r["ip_address"])
    cred = UserCA.load(settings.state_dir).issue(runner.runner_id, OPERATOR_CERT_TTL, source_address_toward(ip),
                                                 pty=True)
    return SSHAccess(ip, template.meta.ssh_port, template.meta.ssh_user, cred.key.export_private_key(),
                     cred.cert.export_certificate(), host_key)


def _live(settings: AgentSettings) -> list[dict[str, Any]]:
    data = _read_json(settings.runner_state_file) or {}
    runners = data.get("runners", [])
    return [r for r in runners if isinstance(r, dict)] if isinstance(runners, list) else []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["SETUP_LOG", "RunnerRecord", "SSHAccess", "find_runner", "ssh_access"]
