"""The server's durable state in SQLite (WAL): agents, their enrolments, runners and the command outbox.

Every method is synchronous and runs on the store's single worker thread (`Store.call`), so the
event loop never blocks on disk and SQLite sees one writer.

A create command's setup_script (it holds a registration token) lives here only until the agent
acknowledges the create, or the runner is deleted or gone first: then it is blanked, with
`secure_delete` zeroing the old bytes and a truncating checkpoint taking them out of the WAL
(docs/security.md §4). The files are 0600 in a 0700 directory (db_files.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from shoes_vz.core.conditions import HostCondition
from shoes_vz.core.states import reap_reason_of
from shoes_vz.server.db_files import secure_files

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    max_runners INTEGER NOT NULL,
    templates TEXT NOT NULL DEFAULT '[]',   -- JSON [HeldTemplate]
    host TEXT NOT NULL DEFAULT '{}',
    online INTEGER NOT NULL DEFAULT 0,
    last_seen REAL NOT NULL,
    blocked_until REAL NOT NULL DEFAULT 0,  -- after a capacity error from the host
    conditions TEXT NOT NULL DEFAULT '[]'   -- JSON [HostCondition]: out of placement while any
);
CREATE TABLE IF NOT EXISTS runners (
    runner_id TEXT PRIMARY KEY,
    runner_name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    state TEXT NOT NULL,                    -- core.states.Phase values
    resource_type TEXT NOT NULL,
    template TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    ip_address TEXT NOT NULL DEFAULT '',
    mac_address TEXT NOT NULL DEFAULT '',
    guest_state TEXT NOT NULL DEFAULT 'unspecified',
    error TEXT NOT NULL DEFAULT '',
    capacity_error INTEGER NOT NULL DEFAULT 0,
    timings TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delete_requested INTEGER NOT NULL DEFAULT 0,
    deleted_at REAL
);
CREATE INDEX IF NOT EXISTS runners_name ON runners (runner_name) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS runners_agent ON runners (agent_id) WHERE deleted_at IS NULL;
CREATE TABLE IF NOT EXISTS outbox (
    request_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    runner_id TEXT NOT NULL,
    kind TEXT NOT NULL,                     -- 'create' | 'delete'
    payload TEXT NOT NULL,                  -- JSON
    created_at REAL NOT NULL,
    sent_at REAL,
    acked_at REAL,
    ok INTEGER,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (agent_id) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_runner ON outbox (runner_id);
CREATE INDEX IF NOT EXISTS runners_gone ON runners (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS agent_credentials (
    agent_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,            -- of the secret Enroll handed out; the secret itself is never kept
    hostname TEXT NOT NULL DEFAULT '',
    enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS drains (         -- an operator's drain: kept apart from the agent's own reports
    agent_id TEXT PRIMARY KEY,
    since REAL NOT NULL
);
"""
SCRUBBED = ""  # what a create's setup_script becomes once it is no longer needed
# columns added after a table was first made: (table, column, definition); added when missing
ADDED_COLUMNS = (("agents", "conditions", "TEXT NOT NULL DEFAULT '[]'"),)
DRAINED = "drained"  # the host condition an operator's drain is (server/fleet.py sets and clears it)


@dataclass(frozen=True)
class HeldTemplate:
    """A template an agent reported holding, with its warm slots at the time of the report."""

    name: str
    version: str = ""
    digest: str = ""
    resource_types: tuple[str, ...] = ()
    cpu_cores: int = 0
    memory_bytes: int = 0
    warm_slots: int = 0
    free_warm_slots: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HeldTemplate:
        # rows written before a field existed lack it: the default stands in
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["resource_types"] = tuple(values.get("resource_types", ()))
        return cls(**values)


@dataclass
class AgentRow:
    agent_id: str
    hostname: str
    max_runners: int
    templates: list[HeldTemplate]
    online: bool
    last_seen: float
    blocked_until: float = 0.0
    conditions: list[HostCondition] = field(default_factory=list)  # as the agent reported them
    drained_since: float | None = None  # an operator's drain (the drains table, server/fleet.py)

    @property
    def drained(self) -> bool:
        return self.drained_since is not None

    def out_of_placement(self) -> list[HostCondition]:
        """Every condition that keeps new runners off this host: the agent's and an operator's drain."""
        if self.drained_since is None:
            return self.conditions
        return [*self.conditions, HostCondition(DRAINED, "drained by an operator: running jobs finish, no new "
                                                "runners (shoes-vz undrain)", self.drained_since)]


@dataclass
class RunnerRow:
    runner_id: str
    runner_name: str
    agent_id: str
    state: str
    resource_type: str
    template: str
    labels: list[str] = field(default_factory=list)
    ip_address: str = ""
    mac_address: str = ""
    guest_state: str = "unspecified"
    error: str = ""
    capacity_error: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    delete_requested: bool = False
    deleted_at: float | None = None

    @property
    def reap_reason(self) -> str:
        """Why it was torn down without myshoes (core.states.ReapReason), read from its error; "" otherwise."""
        return reap_reason_of(self.error)


@dataclass
class Command:
    request_id: str
    agent_id: str
    runner_id: str
    kind: str
    payload: dict[str, Any]


def _runner(row: sqlite3.Row) -> RunnerRow:
    d = dict(row)
    d["labels"] = json.loads(d["labels"])
    d["timings"] = json.loads(d["timings"])
    d["capacity_error"] = bool(d["capacity_error"])
    d["delete_requested"] = bool(d["delete_requested"])
    d.pop("reap_reason", None)  # a stored copy of the error's reason, in databases of an earlier version
    return RunnerRow(**d)


def _agent(row: sqlite3.Row) -> AgentRow:
    d = dict(row)
    d.pop("host")
    d["templates"] = [HeldTemplate.from_json(t) for t in json.loads(d["templates"])]
    d["conditions"] = [HostCondition(**c) for c in json.loads(d["conditions"])]
    d["online"] = bool(d["online"])
    d["drained_since"] = d.pop("since", None)
    return AgentRow(**d)


def _templates_json(templates: list[HeldTemplate]) -> str:
    return json.dumps([asdict(t) for t in templates])


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def open(self) -> None:
        secure_files(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA secure_delete=ON")  # overwritten or deleted bytes are zeroed, not left in free space
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        for table, column, definition in ADDED_COLUMNS:  # a database an older server made
            if column not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self._db = db
        secure_files(self.path)  # the -wal and -shm SQLite just made (or an older server left)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aopen(self) -> None:
        await self.call(self.open)

    async def aclose(self) -> None:
        await self.call(self.close)
        self._pool.shutdown(wait=True)

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store not open"
        return self._db

    # -- agents ---------------------------------------------------------------------------------
    def upsert_agent(self, agent_id: str, hostname: str, max_runners: int,
                     templates: list[HeldTemplate], host: dict[str, Any]) -> None:
        self.db.execute(
            """INSERT INTO agents (agent_id, hostname, max_runners, templates, host, online, last_seen)
               VALUES (?, ?, ?, ?, ?, 0, ?)
               ON CONFLICT (agent_id) DO UPDATE SET hostname=excluded.hostname,
                 max_runners=excluded.max_runners, templates=excluded.templates, host=excluded.host,
                 last_seen=excluded.last_seen""",
            (agent_id, hostname, max_runners, _templates_json(templates), json.dumps(host), time.time()),
        )

    def set_agent_templates(self, agent_id: str, templates: list[HeldTemplate]) -> None:
        self.db.execute("UPDATE agents SET templates=? WHERE agent_id=?", (_templates_json(templates), agent_id))

    def set_agent_online(self, agent_id: str, online: bool) -> None:
        self.db.execute("UPDATE agents SET online=?, last_seen=? WHERE agent_id=?",
                        (int(online), time.time(), agent_id))

    def touch_agent(self, agent_id: str) -> None:
        self.db.execute("UPDATE agents SET last_seen=? WHERE agent_id=?", (time.time(), agent_id))

    def set_agent_conditions(self, agent_id: str, conditions: list[HostCondition]) -> None:
        self.db.execute("UPDATE agents SET conditions=? WHERE agent_id=?",
                        (json.dumps([asdict(c) for c in conditions]), agent_id))

    def block_agent(self, agent_id: str, until: float) -> None:
        self.db.execute("UPDATE agents SET blocked_until=? WHERE agent_id=?", (until, agent_id))

    def mark_all_agents_offline(self) -> int:
        """At start: no agent is connected to a server that has just started (a crash left them online)."""
        return self.db.execute("UPDATE agents SET online=0 WHERE online=1").rowcount

    def mark_stale_agents_offline(self, older_than: float) -> list[str]:
        rows = self.db.execute("SELECT agent_id FROM agents WHERE online=1 AND last_seen < ?",
                               (older_than,)).fetchall()
        ids = [r[0] for r in rows]
        self.db.executemany("UPDATE agents SET online=0 WHERE agent_id=?", [(i,) for i in ids])
        return ids

    def agents(self) -> list[AgentRow]:
        return [_agent(r) for r in self.db.execute(
            "SELECT agents.*, drains.since FROM agents LEFT JOIN drains USING (agent_id) ORDER BY agent_id")]

    # -- runners --------------------------------------------------------------------------------
    def live_runner_by_name(self, name: str) -> RunnerRow | None:
        row = self.db.execute(
            "SELECT * FROM runners WHERE runner_name=? AND deleted_at IS NULL ORDER BY created_at DESC LIMIT 1",
            (name,),
        ).fetchone()
        return _runner(row) if row else None

    def runner(self, runner_id: str) -> RunnerRow | None:
        row = self.db.execute("SELECT * FROM runners WHERE runner_id=?", (runner_id,)).fetchone()
        return _runner(row) if row else None

    def live_runners(self, agent_id: str | None = None) -> list[RunnerRow]:
        if agent_id is None:
            rows = self.db.execute("SELECT * FROM runners WHERE deleted_at IS NULL")
        else:
            rows = self.db.execute("SELECT * FROM runners WHERE deleted_at IS NULL AND agent_id=?", (agent_id,))
        return [_runner(r) for r in rows]

    def runner_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM runners WHERE deleted_at IS NULL GROUP BY state")
        return {r[0]: r[1] for r in rows}

    def insert_runner_with_command(self, r: RunnerRow, cmd: Command) -> None:
        """The reservation and its create intent, in one transaction (written before sending)."""
        with self._tx():
            self.db.execute(
                """INSERT INTO runners (runner_id, runner_name, agent_id, state, resource_type, template,
                   labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (r.runner_id, r.runner_name, r.agent_id, r.state, r.resource_type, r.template,
                 json.dumps(r.labels), r.created_at, r.created_at),
            )
            self._insert_command(cmd)

    def request_delete(self, runner_id: str, cmd: Command | None) -> None:
        """The delete intent; a create the agent has not acknowledged yet is cancelled with it (never
        sent again, its script dropped)."""
        with self._tx():
            self.db.execute("UPDATE runners SET delete_requested=1, updated_at=? WHERE runner_id=?",
                            (time.time(), runner_id))
            self._cancel_create(runner_id, "deleted")
            if cmd is not None:
                self._insert_command(cmd)
        self._scrub(runner_id)

    def update_runner(self, runner_id: str, **fields: Any) -> None:
        for k in ("labels", "timings"):
            if k in fields:
                fields[k] = json.dumps(fields[k])
        for k in ("capacity_error", "delete_requested"):
            if k in fields:
                fields[k] = int(fields[k])
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE runners SET {cols} WHERE runner_id=?", (*fields.values(), runner_id))

    def mark_gone(self, runner_id: str) -> None:
        self.db.execute("UPDATE runners SET state='gone', deleted_at=?, updated_at=? WHERE runner_id=? "
                        "AND deleted_at IS NULL", (time.time(), time.time(), runner_id))
        self._cancel_create(runner_id, "gone")
        self._scrub(runner_id)

    def runner_agents(self, runner_ids: list[str]) -> dict[str, str]:
        """runner id → the agent it was placed on, for those of `runner_ids` the store knows."""
        if not runner_ids:
            return {}
        marks = ",".join("?" * len(runner_ids))
        rows = self.db.execute(f"SELECT runner_id, agent_id FROM runners WHERE runner_id IN ({marks})", runner_ids)
        return {r[0]: r[1] for r in rows}

    def reap_runner(self, runner_id: str, error: str) -> bool:
        """Gone without the agent (server/reaper.py): its row says why, and a create it was never sent
        is withdrawn; True when it was live. A later DeleteInstance answers NOT_FOUND."""
        now = time.time()
        with self._tx():
            done = self.db.execute("UPDATE runners SET state='gone', error=?, deleted_at=?, updated_at=? "
                                   "WHERE runner_id=? AND deleted_at IS NULL", (error, now, now, runner_id)).rowcount
            self.db.execute("UPDATE outbox SET acked_at=?, ok=0, error='reaped' WHERE runner_id=? AND kind='create' "
                            "AND acked_at IS NULL AND sent_at IS NULL", (now, runner_id))
        return bool(done)

    def prune_history(self, keep: int, older_than: float) -> int:
        """Forget gone runners beyond the newest `keep`, and those gone before `older_than`, with their
        commands; how many. A DeleteInstance of one answers NOT_FOUND (done, for myshoes), as for any
        gone runner, and should an agent still run one its report is an orphan's: answered with a delete."""
        doomed = ("deleted_at IS NOT NULL AND (deleted_at < :older_than OR runner_id NOT IN (SELECT runner_id FROM "
                  "runners WHERE deleted_at IS NOT NULL ORDER BY deleted_at DESC LIMIT :keep))")
        args = {"older_than": older_than, "keep": keep}
        with self._tx():
            self.db.execute(f"DELETE FROM outbox WHERE runner_id IN (SELECT runner_id FROM runners WHERE {doomed})",
                            args)
            return int(self.db.execute(f"DELETE FROM runners WHERE {doomed}", args).rowcount)

    # -- outbox ---------------------------------------------------------------------------------
    def _insert_command(self, cmd: Command) -> None:
        self.db.execute(
            "INSERT INTO outbox (request_id, agent_id, runner_id, kind, payload, created_at) VALUES (?,?,?,?,?,?)",
            (cmd.request_id, cmd.agent_id, cmd.runner_id, cmd.kind, json.dumps(cmd.payload), time.time()),
        )

    def pending_commands(self, agent_id: str, sent_before: float | None = None) -> list[Command]:
        q = "SELECT * FROM outbox WHERE agent_id=? AND acked_at IS NULL"
        args: tuple[Any, ...] = (agent_id,)
        if sent_before is not None:
            q += " AND (sent_at IS NULL OR sent_at < ?)"
            args += (sent_before,)
        rows = self.db.execute(q + " ORDER BY created_at", args).fetchall()
        return [Command(r["request_id"], r["agent_id"], r["runner_id"], r["kind"], json.loads(r["payload"]))
                for r in rows]

    def mark_sent(self, request_ids: list[str]) -> None:
        now = time.time()
        self.db.executemany("UPDATE outbox SET sent_at=? WHERE request_id=?", [(now, i) for i in request_ids])

    def command_agents(self, request_ids: list[str]) -> dict[str, str]:
        """request id → the agent the command is addressed to, for those of `request_ids` in the outbox."""
        if not request_ids:
            return {}
        marks = ",".join("?" * len(request_ids))
        rows = self.db.execute(f"SELECT request_id, agent_id FROM outbox WHERE request_id IN ({marks})", request_ids)
        return {r[0]: r[1] for r in rows}

    def ack(self, request_id: str, agent_id: str, ok: bool, error: str) -> Command | None:
        """The agent's ack of one of its own commands; an acknowledged create's script is dropped."""
        row = self.db.execute("SELECT * FROM outbox WHERE request_id=? AND agent_id=? AND acked_at IS NULL",
                              (request_id, agent_id)).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE outbox SET acked_at=?, ok=?, error=? WHERE request_id=?",
                        (time.time(), int(ok), error, request_id))
        if row["kind"] == "create":
            self._scrub(row["runner_id"])
        return Command(row["request_id"], row["agent_id"], row["runner_id"], row["kind"],
                       json.loads(row["payload"]))

    def _cancel_create(self, runner_id: str, why: str) -> None:
        self.db.execute("UPDATE outbox SET acked_at=?, ok=0, error=? WHERE runner_id=? AND kind='create' AND "
                        "acked_at IS NULL", (time.time(), f"cancelled: the runner was {why} before the agent "
                                             "acknowledged its create", runner_id))

    def _scrub(self, runner_id: str) -> None:
        """Drop the setup_script of `runner_id`'s acknowledged or cancelled creates, from the WAL too."""
        cur = self.db.execute(
            "UPDATE outbox SET payload=json_set(payload, '$.setup_script', ?) WHERE runner_id=? AND kind='create' "
            "AND acked_at IS NOT NULL AND json_extract(payload, '$.setup_script') != ?",
            (SCRUBBED, runner_id, SCRUBBED))
        if cur.rowcount:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- enrolments -----------------------------------------------------------------------------
    def enroll_agent(self, agent_id: str, hostname: str, secret_sha256: str) -> bool:
        """Record the agent's secret hash; False (nothing changed) when the id is enrolled already."""
        cur = self.db.execute("INSERT OR IGNORE INTO agent_credentials (agent_id, secret_sha256, hostname, "
                              "enrolled_at) VALUES (?, ?, ?, ?)", (agent_id, secret_sha256, hostname, time.time()))
        return cur.rowcount == 1

    def agent_secret_sha256(self, agent_id: str) -> str | None:
        row = self.db.execute("SELECT secret_sha256 FROM agent_credentials WHERE agent_id=?", (agent_id,)).fetchone()
        return str(row[0]) if row else None

    def enrolled_agents(self) -> list[tuple[str, str, float]]:
        """(agent id, hostname at enrolment, enrolled at) of every enrolled agent."""
        rows = self.db.execute("SELECT agent_id, hostname, enrolled_at FROM agent_credentials ORDER BY agent_id")
        return [(r[0], r[1], r[2]) for r in rows]

    def forget_agent(self, agent_id: str) -> bool:
        """Drop the agent's enrolment (its id may enrol again); its runners and history stay."""
        with self._tx():
            cur = self.db.execute("DELETE FROM agent_credentials WHERE agent_id=?", (agent_id,))
            self.db.execute("UPDATE agents SET online=0 WHERE agent_id=?", (agent_id,))
        return cur.rowcount == 1

    def create_acked(self, runner_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM outbox WHERE runner_id=? AND kind='create' AND acked_at IS NOT NULL",
                              (runner_id,)).fetchone()
        return row is not None

    def _tx(self) -> Any:
        db = self.db

        class _T:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, et: Any, *_: Any) -> None:
                db.execute("ROLLBACK" if et else "COMMIT")

        return _T()
