"""The status page (issue 14 item 2), rendered by headless Chromium (Debian's `chromium`) from a real server
with two real sim agents: what it shows is what AdminService answers; nothing from outside becomes markup;
off loopback it takes the viewer or operator token and refuses to start without one. The screenshot goes
to build/screenshots/ (`make screenshots`)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fleet_fixtures import OPERATOR, VIEWER, two_agent_fleet
from stack_fixtures import TOKEN, require, server_settings

from shoes_vz.cli.admin_client import AdminClient
from shoes_vz.config import AdminSettings
from shoes_vz.core.errors import ConfigError
from shoes_vz.core.ids import new_runner_id
from shoes_vz.server.app import ServerApp
from shoes_vz.server.store import Command, HeldTemplate, RunnerRow

SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
EVIL = '<script>document.title="owned"</script><img src=x onerror="document.title=1">'


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    require(Path(path).exists(), "Debian's chromium (apt-get install chromium)")
    return path


def headless(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *extra, url], capture_output=True, text=True, timeout=120)


class Dom(HTMLParser):
    """Every element with its attributes, and the text of each `<tr>` keyed by its data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def rows(self, attr: str) -> dict[str, dict[str, str]]:
        return {a[attr]: a for tag, a in self.tags if tag == "tr" and attr in a}


async def test_the_page_shows_what_the_api_answers_and_escapes_everything(tmp_path: Path) -> None:
    async with two_agent_fleet(tmp_path) as fleet:
        app = fleet.server
        store = app.store
        a, b = sorted(fleet.agents, key=lambda x: x.agent_id)
        await fleet.add("job-1")
        await fleet.add("job-2")
        await fleet.add("job-3")
        assert (await fleet.cli("drain", b.agent_id)).returncode == 0
        assert (await fleet.cli("delete", "job-3")).returncode == 0
        # an agent that went away with a runner still booting, and a failure whose text is hostile
        # (a compromised agent reports what it likes; the page must show it as text)
        await store.call(store.upsert_agent, "agent-gone", EVIL[:40], 2,
                         [HeldTemplate(name="sim-test", digest="d" * 24, warm_slots=2, free_warm_slots=1)],
                         {"driver": "sim", "agent_version": "0.1.0"})
        now = time.time()
        booting = RunnerRow(new_runner_id(), "job-booting", "agent-gone", "booting", "small", "sim-test",
                            created_at=now - 125, updated_at=now)
        await store.call(store.insert_runner_with_command, booting,
                         Command("1" * 16, "agent-gone", booting.runner_id, "delete", {}))
        failed = RunnerRow(new_runner_id(), "job-failed", a.agent_id, "error", "small", "sim-test",
                           created_at=now - 60, updated_at=now)
        await store.call(store.insert_runner_with_command, failed,
                         Command("2" * 16, a.agent_id, failed.runner_id, "delete", {}))
        await store.call(store.update_runner, failed.runner_id, error=f"clone failed: {EVIL}",
                         runner_name=f"evil{EVIL}")
        await store.call(store.ack, "2" * 16, a.agent_id, True, "")
        await store.call(store.mark_gone, failed.runner_id)

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{app.status_port}/"
        dumped = await asyncio.to_thread(headless, url, tmp_path / "chromium", "--dump-dom")
        assert dumped.returncode == 0 and "<html" in dumped.stdout, dumped.stderr[-2000:]
        shot = SCREENSHOTS / "status-page.png"
        shot.unlink(missing_ok=True)
        taken = await asyncio.to_thread(headless, url, tmp_path / "chromium", f"--screenshot={shot}",
                                        "--window-size=1500,1300", "--hide-scrollbars")
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        dom = Dom()
        dom.feed(dumped.stdout)
        # nothing from outside became markup: no script at all, no event handler, the title untouched
        assert not [t for t, _ in dom.tags if t in ("script", "img", "iframe")], dom.tags
        assert not [(t, k) for t, attrs in dom.tags for k in attrs if k.startswith("on")]
        assert "<title>shoes-vz fleet</title>" in dumped.stdout
        text = "".join(dom.text)
        assert f"clone failed: {EVIL}" in text  # shown, as text

        def read_api() -> tuple[list[Any], list[Any]]:  # the blocking client, off this (the server's) loop
            with AdminClient(AdminSettings(server_addr=fleet.addr, token=VIEWER)) as api:
                return api.agents(), api.runners()

        agents, runners = await asyncio.to_thread(read_api)
        shown_agents = dom.rows("data-agent")
        assert set(shown_agents) == {x.agent_id for x in agents} == {a.agent_id, b.agent_id, "agent-gone"}
        for x in agents:
            row = shown_agents[x.agent_id]
            assert (row["data-online"], row["data-drained"], row["data-runners"], row["data-max"]) == (
                str(int(x.online)), str(int(x.drained)), str(x.running_runners), str(x.max_runners)), x.agent_id
        assert shown_agents[b.agent_id]["data-drained"] == "1" and shown_agents["agent-gone"]["data-online"] == "0"
        shown_runners = dom.rows("data-runner")
        assert {k: v["data-state"] for k, v in shown_runners.items()} == {r.runner_id: r.state for r in runners}
        assert {r.state for r in runners} >= {"running", "booting"}
        assert failed.runner_id in dom.rows("data-failure")
        assert "sim-test:total" in dom.rows("data-startup") and "sim-test:clone" in dom.rows("data-startup")
        assert "agent-gone:sim-test" in dom.rows("data-warm")


async def test_off_loopback_the_page_takes_the_viewer_or_operator_token(tmp_path: Path) -> None:
    async with ServerApp(server_settings(tmp_path, status_listen="0.0.0.0:0", allow_plaintext=True,
                                         operator_token=OPERATOR, viewer_token=VIEWER)) as app:
        url = f"http://127.0.0.1:{app.status_port}/"

        def basic(password: str) -> str:
            return "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()

        async with aiohttp.ClientSession() as http:
            for header, expected in ((None, 401), (f"Bearer {TOKEN}", 401), (basic(TOKEN), 401),
                                     ("Bearer x" + VIEWER[1:], 401), ("Basic !!!", 401), (basic(""), 401),
                                     (f"Bearer {VIEWER}", 200), (f"Bearer {OPERATOR}", 200), (basic(VIEWER), 200)):
                async with http.get(url, headers={"Authorization": header} if header else {}) as r:
                    body = await r.text()
                    assert r.status == expected, (header, r.status)
                    if expected == 401:
                        assert "shoes-vz fleet" not in body and r.headers["WWW-Authenticate"].startswith("Basic")


def test_off_loopback_the_page_needs_a_token_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="status page on 0.0.0.0:9092 to anyone: set server.viewer_token"):
        server_settings(tmp_path, status_listen="0.0.0.0:9092", allow_plaintext=True).check_transport()
    with pytest.raises(ConfigError, match="plaintext status page"):
        server_settings(tmp_path, status_listen="0.0.0.0:9092", viewer_token=VIEWER).check_transport()
    server_settings(tmp_path, status_listen="0.0.0.0:9092", viewer_token=VIEWER,
                    allow_plaintext=True).check_transport()
