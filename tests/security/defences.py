#!/usr/bin/env python3
"""Each server-side defence of issue 11, removed one at a time: the security tests must catch every one.

    python tests/security/defences.py [--only SUBSTRING] [--list]

For each mutation below the script edits the source (the `old` text must occur exactly once), runs
`pytest -x tests/security` with CI set, restores the file, and prints which test failed first. A
mutation no test catches is printed as SURVIVED and makes the exit status 1. Not part of `make test`
(it runs the security tests once per mutation); run it after changing a defence.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "shoes_vz"


@dataclass(frozen=True)
class Mutation:
    what: str
    path: str   # under src/shoes_vz
    old: str
    new: str


M = Mutation
MUTATIONS = [
    # -- roles and credentials (server/auth.py, server/principal.py, the services) ------------------
    M("a wrong bearer token counts as the myshoes token", "server/auth.py",
      'return Principal(role) if role is not None else "a wrong bearer token"',
      'return Principal(role if role is not None else Role.MYSHOES)'),
    M("no credentials pass on every method", "server/auth.py",
      "            if method not in self.open_methods:\n                return self._refuse(handler, method, \"no credentials\")\n            found = Principal(self.open_methods[method])",
      "            found = Principal(self.open_methods.get(method, Role.MYSHOES))"),
    M("an agent's secret is not checked", "server/auth.py",
      "            if await self.verify_agent(*cred):", "            if True:"),
    M("more than one authorization header is taken", "server/auth.py",
      "        if len(values) > 1:\n            return \"more than one authorization header\"", ""),
    M("a refused stream is not drained first", "server/auth.py",
      "        await asyncio.wait_for(take(), DRAIN_SECONDS)", "        pass"),
    M("allow() lets every role through", "server/principal.py",
      "    if p.role in roles:\n        return p", "    if True:\n        return p"),
    M("AddInstance does not check the role", "server/shoes_service.py",
      "                          ) -> pb.AddInstanceResponse:\n        await allow(context, Role.MYSHOES)",
      "                          ) -> pb.AddInstanceResponse:"),
    M("DeleteInstance does not check the role", "server/shoes_service.py",
      "                             ) -> pb.DeleteInstanceResponse:\n        await allow(context, Role.MYSHOES)",
      "                             ) -> pb.DeleteInstanceResponse:"),
    M("Enroll takes any role", "server/agent_service.py",
      "        await allow(context, Role.ENROLLMENT)", "        await allow(context, *Role)"),
    M("RegisterAgent takes the myshoes role", "server/agent_service.py",
      "        agent_id = (await allow(context, Role.AGENT)).agent_id\n        try:\n            limits.check_register",
      "        agent_id = (await allow(context, Role.AGENT, Role.MYSHOES)).agent_id or request.agent_id\n"
      "        try:\n            limits.check_register"),
    M("Sync takes the myshoes role", "server/agent_service.py",
      "        agent_id = (await allow(context, Role.AGENT)).agent_id\n        try:\n            first",
      "        agent_id = (await allow(context, Role.AGENT, Role.MYSHOES)).agent_id or 'agent-x'\n        try:\n            first"),
    # -- agent identity (server/enrollment.py, server/store.py) ---------------------------------------
    M("an enrolled id can be enrolled again", "server/store.py",
      '"INSERT OR IGNORE INTO agent_credentials', '"INSERT OR REPLACE INTO agent_credentials'),
    M("forget-agent runs beside a live server", "server/enrollment.py",
      '    lock.acquire(f"the database {db_path}", "Stop the server first: forget-agent works on its database offline.")',
      ""),
    # -- the Sync binding (server/binding.py, server/agent_service.py) --------------------------------
    M("a message may name another agent", "server/binding.py",
      "    if claimed and claimed != agent_id:", "    if False:"),
    M("a report about another agent's runner is taken", "server/binding.py",
      "        if owner != agent_id:\n            raise Refused(f\"runner", "        if False:\n            raise Refused(f\"runner"),
    M("an ack of another agent's command is taken", "server/binding.py",
      "        if owner != agent_id:\n            raise Refused(f\"command", "        if False:\n            raise Refused(f\"command"),
    M("the outbox acks a command for any agent", "server/store.py",
      'row = self.db.execute("SELECT * FROM outbox WHERE request_id=? AND agent_id=? AND acked_at IS NULL",\n'
      '                              (request_id, agent_id)).fetchone()',
      'row = self.db.execute("SELECT * FROM outbox WHERE request_id=? AND acked_at IS NULL",\n'
      '                              (request_id,)).fetchone()'),
    M("a refused first message still attaches the stream", "server/agent_service.py",
      "        if refused is not None:\n            await drain(it)\n            await self._refuse_call(context, agent_id, *refused)\n        conn",
      "        conn"),
    M("a refused later message is applied anyway", "server/agent_service.py",
      "                    if refused is not None:\n                        ended.append(refused)\n                        return",
      ""),
    M("a runner's address may be any text", "server/limits.py",
      "    if not value:\n        return\n    try:", "    if True:\n        return\n    try:"),
    M("orphan deletes are sent on every message", "server/orphans.py",
      "            if sent_at is not None and now - sent_at < self.resend_after:", "            if False:"),
    # -- input limits (server/limits.py) --------------------------------------------------------------
    M("max_runners unbounded", "server/limits.py",
      '    _range(req.capacity.max_runners, 0, MAX_AGENT_RUNNERS, "capacity.max_runners")', ""),
    M("negative memory allowed", "server/limits.py",
      '    _range(req.capacity.memory_bytes, 0, MAX_MEMORY_BYTES, "capacity.memory_bytes")', ""),
    M("agent ids unchecked in RegisterAgent", "server/limits.py",
      "    if req.agent_id:  # empty: the authenticated agent's own\n        ids.validate_agent_id(req.agent_id)", ""),
    M("agent ids unchecked in Enroll", "server/limits.py",
      "def check_enroll(req: pb.EnrollRequest) -> None:\n    ids.validate_agent_id(req.agent_id)",
      "def check_enroll(req: pb.EnrollRequest) -> None:\n    pass"),
    M("hostnames unchecked", "server/limits.py",
      '    _match(HOSTNAME_RE, req.hostname, "hostname", "up to 253 of A-Z a-z 0-9 . _ -")\n    _range(req.capacity.max_runners',
      '    _range(req.capacity.max_runners'),
    M("host facts unchecked", "server/limits.py",
      '        _fact(getattr(req.host, name), f"host.{name}")', "        pass"),
    M("template count unbounded", "server/limits.py",
      '    _count(templates, MAX_TEMPLATES, "templates")', ""),
    M("template names unchecked", "server/limits.py",
      "    for t in templates:\n        ids.validate_template_name(t.name)", "    for t in templates:"),
    M("template versions unchecked", "server/limits.py",
      '        _match(VERSION_RE, t.version, f"template {t.name} version", "up to 64 of A-Z a-z 0-9 . _ + : ~ -")', ""),
    M("resource types per template unbounded", "server/limits.py",
      '        _count(t.resource_types, MAX_RESOURCE_TYPES, f"resource types of template {t.name}")', ""),
    M("resource type names unchecked", "server/limits.py",
      '            _match(RESOURCE_TYPE_RE, rt, f"template {t.name} resource type", "1..32 of A-Z a-z 0-9 _ -")',
      "            pass"),
    M("warm slots unbounded", "server/limits.py",
      '        _range(t.warm_slots, 0, MAX_AGENT_RUNNERS, f"template {t.name} warm_slots")', ""),
    M("free warm slots above the slots", "server/limits.py",
      '        _range(t.free_warm_slots, 0, t.warm_slots, f"template {t.name} free_warm_slots")', ""),
    M("negative cpu_cores allowed", "server/limits.py",
      '        _range(t.cpu_cores, 0, MAX_CPU_CORES, f"template {t.name} cpu_cores")', ""),
    M("runners per message unbounded", "server/limits.py",
      '    _count(req.runners, MAX_RUNNERS_PER_REPORT, "runners")', ""),
    M("runner ids unchecked", "server/limits.py",
      '    _match(ids.RUNNER_ID_RE, r.runner_id, "runner_id", "16 hex digits, as the server made it")', ""),
    M("MAC addresses unchecked", "server/limits.py",
      '    if r.mac_address:\n        _match(MAC_RE,', '    if False:\n        _match(MAC_RE,'),
    M("NaN timings allowed", "server/limits.py",
      "        if not math.isfinite(value):", "        if False:"),
    M("negative timings allowed", "server/limits.py",
      '        _range(value, 0, MAX_SECONDS, f"runner {r.runner_id} timings.{name}")', "        pass"),
    M("acks per message unbounded", "server/limits.py",
      '    _count(req.acks, MAX_ACKS_PER_REPORT, "acks")', ""),
    M("ack ids unchecked", "server/limits.py",
      '        _match(REQUEST_ID_RE, a.request_id, "ack request_id", "1..64 hex digits, as the server made it")',
      "        pass"),
    M("condition reasons unchecked", "server/limits.py",
      '                _match(REASON_RE, c.reason, "host condition reason", "1..64 of a-z 0-9 _")', "                pass"),
    M("timestamps unchecked", "server/limits.py",
      "    if not (0 <= ts.seconds <= MAX_TIMESTAMP and 0 <= ts.nanos < 1_000_000_000):", "    if False:"),
    M("template reports in Sync unchecked", "server/limits.py",
      '    if req.HasField("templates"):\n        check_templates(req.templates.templates)', ""),
    M("gRPC message size 64 MiB", "server/limits.py",
      "MAX_MESSAGE_BYTES = 2 * 1024 * 1024", "MAX_MESSAGE_BYTES = 64 * 1024 * 1024"),
    M("a vz host may claim more than Apple's limit", "server/agent_service.py",
      '    if driver == "vz" and slots > HOST_VM_LIMIT:', "    if False:"),
    # -- logs (core/logsafe.py, server/auth.py, server/agent_service.py) -----------------------------
    M("logged fields not escaped", "core/logsafe.py",
      "    out = repr(text[:limit] if cut > 0 else text)", "    out = text[:limit] if cut > 0 else text"),
    M("logged fields not capped", "core/logsafe.py",
      "    cut = len(text) - limit\n", "    cut = 0\n"),
    M("refusals logged every time", "server/auth.py",
      "        if seen is not None and now - seen.logged_at < self.interval:", "        if False:"),
    M("refusals counted per refused value", "server/agent_service.py",
      '        self.refusals.note(f"{agent_id}:{subject}", f"refused', '        self.refusals.note(f"{agent_id}:{message}", f"refused'),
    M("every template named in the log", "server/agent_service.py",
      "def describe_templates(templates: list[HeldTemplate], shown_at_most: int = 8) -> str:",
      "def describe_templates(templates: list[HeldTemplate], shown_at_most: int = 10**6) -> str:"),
    M("an unchanged registration logged at INFO", "server/agent_service.py",
      "        level = logging.DEBUG if before == [(request.hostname, slots, templates)] else logging.INFO",
      "        level = logging.INFO"),
    M("undecodable requests reach gRPC's own handling", "server/auth.py",
      "            return decode(raw) if decode else raw\n        except (DecodeError, ValueError, TypeError) as e:\n"
      "            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT",
      "            return decode(raw) if decode else raw\n        except ZeroDivisionError as e:\n"
      "            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT"),
    M("undecodable stream frames reach gRPC's own handling", "server/auth.py",
      "                    yield decode(raw) if decode else raw\n                except (DecodeError, ValueError, TypeError) as e:",
      "                    yield decode(raw) if decode else raw\n                except ZeroDivisionError as e:"),
    M("a long cloud_id echoed whole", "server/shoes_service.py",
      'f"no runner {shown(request.cloud_id)}"', 'f"no runner {request.cloud_id!r}"'),
    # -- secrets in the store (server/store.py, server/db_files.py) ----------------------------------
    M("the script is not dropped after the ack", "server/store.py",
      "        if row[\"kind\"] == \"create\":\n            self._scrub(row[\"runner_id\"])", ""),
    M("the WAL is not truncated after a scrub", "server/store.py",
      '            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")', "            pass"),
    M("freed pages not zeroed", "server/store.py",
      '        db.execute("PRAGMA secure_delete=ON")', "        pass"),
    M("a delete does not cancel an unacknowledged create", "server/store.py",
      '            self._cancel_create(runner_id, "deleted")\n', ""),
    M("database files keep wider modes", "server/db_files.py",
      "        if stat.S_IMODE(st.st_mode) != FILE_MODE:\n            os.chmod(path, FILE_MODE)",
      "        if False:\n            os.chmod(path, FILE_MODE)"),
    M("the database's directory keeps wider modes", "server/db_files.py",
      "    if stat.S_IMODE(st.st_mode) != DIR_MODE:\n        os.chmod(directory, DIR_MODE)",
      "    if False:\n        os.chmod(directory, DIR_MODE)"),
    M("a shared directory is taken for the database", "server/db_files.py",
      "    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):", "    if False:"),
    M("another user's directory is taken for the database", "server/db_files.py",
      "    if st.st_uid != os.geteuid():\n        raise ConfigError(f\"server: the database's directory",
      "    if False:\n        raise ConfigError(f\"server: the database's directory"),
    # -- safe defaults (config.py) --------------------------------------------------------------------
    M("no tokens needed off loopback", "config.py",
      "        if self.open_roles():\n            raise ConfigError(", "        if False:\n            raise ConfigError("),
    M("plaintext off loopback without allow_plaintext", "config.py",
      "        if not self.tls_cert and not self.allow_plaintext:", "        if False:"),
    M("the old token key is ignored", "config.py",
      "            raise ValueError(message)\n    return data", "            pass\n    return data"),
    M("short tokens allowed", "config.py",
      "    if len(value) < TOKEN_MIN_CHARS or", "    if False and len(value) < TOKEN_MIN_CHARS or"),
    M("one token for two roles", "config.py",
      "                if getattr(self, a) == getattr(self, b):", "                if False:"),
    M("no warning when open on loopback", "server/app.py",
      "        if s.open_roles():\n            doors", "        if False:\n            doors"),
    # -- the agent's side of its identity (agent/credential.py) --------------------------------------
    M("the agent's secret written 0644", "agent/credential.py",
      "fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SECRET_MODE)",
      "fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)"),
    M("a refused secret is kept (no re-enrolment)", "agent/sync.py",
      '        self.credential.secret = ""', "        pass"),
]


def run(m: Mutation) -> tuple[str, float]:
    path = SRC / m.path
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        return f"BROKEN MUTATION: the text occurs {n} times in {m.path}", 0.0
    path.write_text(text.replace(m.old, m.new))
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests/security"],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=1800)
    finally:
        path.write_text(text)
    seconds = time.monotonic() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    if done.returncode == 0:
        return "SURVIVED", seconds
    return (failed[0] if failed else f"pytest exit {done.returncode}: {done.stdout[-300:]}"), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="run the mutations whose description contains this")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only in m.what]
    if args.list:
        for m in chosen:
            print(f"{m.path:28} {m.what}")
        return 0
    survived = 0
    for i, m in enumerate(chosen, 1):
        caught, seconds = run(m)
        survived += not caught.startswith("tests/")
        print(f"{i:3}/{len(chosen)} {m.path:26} {m.what:55} → {caught} ({seconds:.0f}s)", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
