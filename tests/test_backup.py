"""`shoes-vz server backup`: a copy of the database taken while the server runs and writes opens on
its own and has the rows (SQLite's online backup API), 0600 like the original."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from stack_fixtures import CLI, cli_env, make_stack, one_error_line

from shoes_vz.wire import shoes_pb2_grpc as sgrpc


async def test_a_backup_while_the_server_runs_has_the_rows(tmp_path: Path) -> None:
    async with make_stack(tmp_path / "stack") as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            replies = [await stack.add(stub, f"backed-{i}") for i in range(2)]
        db = stack.server.settings.db_path
        assert (db.parent / (db.name + "-wal")).exists()  # the rows may still be in the WAL only
        dest = tmp_path / "backup.db"
        p = subprocess.run([*CLI, "server", "backup", str(dest), "--db", str(db)], capture_output=True, text=True,
                           timeout=60, env=cli_env())
        assert p.returncode == 0, p.stderr
        assert "(2 runner rows)" in p.stdout
        live = {r.runner_id for r in await stack.server.store.call(stack.server.store.live_runners)}
        agent_id = stack.agent.agent_id
        again = subprocess.run([*CLI, "server", "backup", str(dest), "--db", str(db)], capture_output=True,
                               text=True, timeout=60, env=cli_env())
    assert again.returncode == 1 and "exists: back up to a new file" in one_error_line(again.stderr)
    assert dest.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "backup.db-wal").exists()  # one self-contained file
    with sqlite3.connect(dest) as copy:  # opened with the server gone: nothing but the file
        rows = {r[0] for r in copy.execute("SELECT runner_id FROM runners WHERE deleted_at IS NULL")}
        agents = [r[0] for r in copy.execute("SELECT agent_id FROM agents")]
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert rows == live == {r.cloud_id.removeprefix("shoes-vz-") for r in replies}
    assert agents == [agent_id]


def test_backup_of_no_database_is_one_clear_error(tmp_path: Path) -> None:
    p = subprocess.run([*CLI, "server", "backup", str(tmp_path / "b.db"), "--db", str(tmp_path / "none.db")],
                       capture_output=True, text=True, timeout=60, env=cli_env())
    assert p.returncode == 1 and "no database at" in one_error_line(p.stderr)
    assert not list(tmp_path.iterdir())
