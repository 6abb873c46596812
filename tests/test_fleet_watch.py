"""`shoes-vz agents/runners --watch`: piped, each refresh is a new document (JSON: one line each); Ctrl-C
ends the watch with exit 0, not an error. Against a real server process' AdminService."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

from stack_fixtures import CLI, cli_env, server_settings

from shoes_vz.server.app import ServerApp
from shoes_vz.server.store import HeldTemplate


async def test_watch_refreshes_until_ctrl_c(tmp_path: Path) -> None:
    async with ServerApp(server_settings(tmp_path)) as app:  # loopback, no operator token: open
        await app.store.call(app.store.upsert_agent, "agent-w", "host-w", 2, [HeldTemplate(name="t")],
                             {"driver": "sim", "agent_version": "0.1.0"})
        env = cli_env(SHOESVZ_ADMIN_SERVER_ADDR=f"127.0.0.1:{app.port}")
        proc = subprocess.Popen([*CLI, "agents", "--watch", "0.3", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while len(lines) < 3 and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            if line:
                lines.append(line)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert err == ""
        docs = [json.loads(ln) for ln in [*lines, *rest.splitlines()] if ln.strip()]
        assert len(docs) >= 3 and all(d[0]["agent_id"] == "agent-w" and not d[0]["online"] for d in docs)
