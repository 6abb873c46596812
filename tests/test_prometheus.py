"""The dashboard and the alerts work against a real Prometheus (Debian's package) scraping a real
server and sim agent that did real work: every dashboard query and every alert expression parses
and returns data (an alert that is quiet when all is well: its series exist); promtool checks the
rules and runs their unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from metrics_fixtures import do_work, promtool
from stack_fixtures import SimStack, make_stack, require

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "shoes-vz-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "shoes-vz-alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "shoes-vz-fleet.json"
SCRAPE_MS = 500  # a run of seconds gives rate() its samples
SCRAPE = SCRAPE_MS / 1000
# Grafana's own variable: here a window over the whole run (Prometheus starts before the work)
GRAFANA_VARS = {"$__rate_interval": "5m"}
# the alerts that fire in the worked stack (two runners on two slots and a third AddInstance refused)
FIRING = {"ShoesVzCapacityExhausted"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, val in GRAFANA_VARS.items():
                expr = expr.replace(var, val)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not fill: {expr}"
            out.append((panel["title"], expr))
    return out


def alert_names() -> list[str]:
    """The alerts in the rules file, read as text (the rules themselves are read by Prometheus)."""
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)


def alerts_tested_to_fire() -> set[str]:
    """The alerts the unit tests expect to fire (an `alertname` whose `exp_alerts` is not empty)."""
    return set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- ", RULE_TESTS.read_text()))


class Prometheus:
    def __init__(self, root: Path, stack: SimStack) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_MS}ms", "evaluation_interval": f"{SCRAPE_MS}ms"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "shoes-vz-server",
                 "static_configs": [{"targets": [f"127.0.0.1:{stack.server.metrics_port}"]}]},
                {"job_name": "shoes-vz-agent",
                 "static_configs": [{"targets": [f"127.0.0.1:{stack.agent.metrics_port}"]}]},
            ],
        }
        self.config = root / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # YAML is a superset of JSON
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("prometheus")
        require(binary is not None, "prometheus (apt-get install prometheus)")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=(self.root / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with http.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (self.root / "prometheus.log").read_text()
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                if len(await self.query(http, "up == 1")) == 2:
                    return
            await asyncio.sleep(0.2)
        raise AssertionError("Prometheus did not scrape both targets:\n" + (self.root / "prometheus.log").read_text())


@contextlib.asynccontextmanager
async def prometheus_for(root: Path, stack: SimStack) -> AsyncIterator[tuple[Prometheus, aiohttp.ClientSession]]:
    root.mkdir()
    prom = Prometheus(root, stack)
    prom.start()
    try:
        async with aiohttp.ClientSession() as http:
            await prom.ready(http)
            yield prom, http
    finally:
        prom.stop()


def shown(result: list[dict[str, Any]]) -> str:
    return ", ".join(f"{json.dumps(r['metric'], sort_keys=True)}={r['value'][1]}" for r in result[:6]) + (
        f" (+{len(result) - 6})" if len(result) > 6 else "")


def series_of(expr: str) -> set[str]:
    return set(re.findall(r"\bshoesvz_[a-z_]+", expr))


async def test_dashboard_and_alerts_against_a_real_prometheus(tmp_path: Path) -> None:
    async with make_stack(tmp_path / "stack", max_runners=2) as stack, \
            prometheus_for(tmp_path / "prometheus", stack) as (prom, http):
        await do_work(stack)  # after Prometheus's first scrape: every rate() sees the work
        await asyncio.sleep(6 * SCRAPE)
        report = []
        for title, expr in dashboard_queries():
            result = await prom.query(http, expr)
            report.append(f"dashboard {title!r}: {expr} -> {shown(result)}")
            assert result, f"dashboard panel {title!r}: {expr} returned nothing"
            # a number, not NaN: a quantile of rates that saw no observation would be NaN
            assert any(math.isfinite(float(r["value"][1])) for r in result), f"{title!r}: {expr} -> {result}"
        # the rules as Prometheus loaded and evaluates them
        async with http.get(f"{prom.url}/api/v1/rules") as r:
            rules = [rule for g in (await r.json())["data"]["groups"] for rule in g["rules"]]
        assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
        for rule in rules:
            expr = " ".join(rule["query"].split())
            result = await prom.query(http, expr)
            report.append(f"alert {rule['name']}: {expr} -> {shown(result) or 'empty'}")
            assert bool(result) == (rule["name"] in FIRING), f"{rule['name']}: {expr} -> {result}"
            assert rule["health"] == "ok", rule
            assert rule["annotations"]["runbook"]
            assert rule["annotations"]["runbook_url"].startswith("docs/operations.md#")
            for name in series_of(expr):  # a quiet alert still watches something that exists
                exists = await prom.query(http, f"count({{__name__=~\"{name}(_bucket)?\"}})")
                report.append(f"  series {name}: {shown(exists)}")
                assert exists, f"{rule['name']}: no series {name}"
        # the capacity alert is pending in Prometheus's own evaluation (its `for` has not passed)
        state = {rule["name"]: rule["state"] for rule in rules}
        assert state["ShoesVzCapacityExhausted"] == "pending", state
    print("\n".join(report))
    (tmp_path / "queries.txt").write_text("\n".join(report) + "\n")


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in check.stdout
    unit = subprocess.run([tool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True,
                          text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout
    assert alerts_tested_to_fire() == set(alert_names())
    config = subprocess.run([tool, "check", "config", str(RULES.with_name("prometheus.example.yml"))],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr  # every alert has a unit test that makes it fire
