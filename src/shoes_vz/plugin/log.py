"""Logging to stderr in a form go-plugin's host re-logs at the right hclog level.

The host reads the plugin's stderr line by line (go-plugin client.go `logStderr`): a JSON line with
`@level`/`@message`/`@timestamp` is logged at that level, otherwise a `[TRACE]`/`[DEBUG]`/`[INFO]`/
`[WARN]`/`[ERROR]` prefix sets it (no prefix: Debug). Both forms are offered; text is the default.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any, TextIO

NAME = "shoes-vz-plugin"
TRACE = 5
_HCLOG = {TRACE: "TRACE", logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN",
          logging.ERROR: "ERROR", logging.CRITICAL: "ERROR"}
_LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}

logger = logging.getLogger("shoes_vz.plugin")


def _hclog_level(levelno: int) -> str:
    for threshold in sorted(_HCLOG, reverse=True):
        if levelno >= threshold:
            return _HCLOG[threshold]
    return "TRACE"


def _kv(record: logging.LogRecord) -> dict[str, Any]:
    kv = getattr(record, "kv", None)
    return dict(kv) if isinstance(kv, dict) else {}


class TextFormatter(logging.Formatter):
    """`[INFO]  shoes-vz-plugin: message: key=value ...` (hclog's own text layout, sans timestamp)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"[{_hclog_level(record.levelno)}]".ljust(8)
        line = f"{prefix}{NAME}: {record.getMessage()}"
        kv = _kv(record)
        if kv:
            line += ": " + " ".join(f"{k}={_text_value(v)}" for k, v in kv.items())
        if record.exc_info:
            line += " error=" + _text_value(self.formatException(record.exc_info))
        return line


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class JSONFormatter(logging.Formatter):
    """One JSON object per line with hclog's `@level`, `@message`, `@module`, `@timestamp`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        entry: dict[str, Any] = {
            "@level": _hclog_level(record.levelno).lower(),
            "@message": record.getMessage(),
            "@module": NAME,
            "@timestamp": ts,
        }
        for key, value in _kv(record).items():
            entry[key] = value if isinstance(value, int | float | bool | str) or value is None else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route the plugin's log (and Python warnings) to stderr, one line per record."""
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    logging.captureWarnings(True)
