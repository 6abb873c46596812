"""How the server, the agent and the plugin log: text for people, JSON (one object a line) to ship.

The JSON shape is hclog's (`@level`, `@message`, `@module`, `@timestamp`), which go-plugin's host
reads from the plugin and log shippers take as they are; extra fields follow. A line about a runner
carries `runner_id` and `runner_name`: whatever runs inside `runner_context` (a runner's tasks, one
RPC's handling of it) gets them from a context variable, so no message has to spell them out.
Third-party loggers (asyncssh, grpc, aiohttp's access log …) stay at WARNING unless --debug.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
TRACE = 5
# loggers of libraries we use: their INFO is noise to an operator (asyncssh logs every connection)
THIRD_PARTY = ("asyncssh", "grpc", "grpc._cython", "aiohttp", "aiohttp.access", "aiohttp.server", "aiohttp.web",
               "aiohttp.client", "asyncio", "urllib3")
_HCLOG = {TRACE: "TRACE", logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN",
          logging.ERROR: "ERROR", logging.CRITICAL: "ERROR"}

_runner: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("shoes_vz_runner", default=None)


@contextlib.contextmanager
def runner_context(runner_id: str, runner_name: str) -> Iterator[None]:
    """Lines logged inside name this runner (tasks created inside inherit it)."""
    token = _runner.set((runner_id, runner_name))
    try:
        yield
    finally:
        _runner.reset(token)


def runner_task_context(runner_id: str, runner_name: str) -> contextvars.Context:
    """A context for `asyncio.create_task(..., context=)`: the task's lines name the runner."""
    ctx = contextvars.copy_context()
    ctx.run(_runner.set, (runner_id, runner_name))
    return ctx


class RunnerFields(logging.Filter):
    """Puts `runner_id`/`runner_name` on a record: from `extra=` if given, else the context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "runner_id", None):
            current = _runner.get()
            if current is not None:
                record.runner_id, record.runner_name = current
        return True


def hclog_level(levelno: int) -> str:
    for threshold in sorted(_HCLOG, reverse=True):
        if levelno >= threshold:
            return _HCLOG[threshold]
    return "TRACE"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's structured fields: the runner's, then `extra={"kv": {...}}`."""
    out: dict[str, Any] = {}
    if getattr(record, "runner_id", None):
        out["runner_id"] = getattr(record, "runner_id", "")
        out["runner_name"] = getattr(record, "runner_name", "")
    kv = getattr(record, "kv", None)
    if isinstance(kv, dict):
        out.update(kv)
    return out


class JSONFormatter(logging.Formatter):
    """One JSON object per line: hclog's `@level`, `@message`, `@module`, `@timestamp`, then fields.
    `module` fixed (the plugin's name) or, by default, the logger's name."""

    def __init__(self, module: str | None = None) -> None:
        super().__init__()
        self.module = module

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        entry: dict[str, Any] = {
            "@level": hclog_level(record.levelno).lower(),
            "@message": record.getMessage(),
            "@module": self.module or record.name,
            "@timestamp": ts,
        }
        for key, value in record_fields(record).items():
            entry[key] = value if isinstance(value, int | float | bool | str) or value is None else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<time> <logger> <LEVEL> <message>`, and `[runner <id> <name>]` when the message does not name it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        runner_id = getattr(record, "runner_id", None)
        if runner_id and runner_id not in record.getMessage():
            line += f" [runner {runner_id} {getattr(record, 'runner_name', '')}]"
        return line


def configure(fmt: str = "text", *, verbose: bool = False, debug: bool = False, stream: TextIO | None = None) -> None:
    """The daemons' logging: one handler on stderr in `fmt`; ours at INFO (DEBUG with --verbose),
    third-party loggers at WARNING (DEBUG with --debug)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RunnerFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose or debug else logging.INFO)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.captureWarnings(True)


__all__ = ["LOG_FORMATS", "JSONFormatter", "RunnerFields", "TextFormatter", "configure", "hclog_level",
           "record_fields", "runner_context", "runner_task_context"]
