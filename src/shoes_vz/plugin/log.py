"""Logging to stderr in a form go-plugin's host re-logs at the right hclog level.

The host reads the plugin's stderr line by line (go-plugin client.go `logStderr`): a JSON line with
`@level`/`@message`/`@timestamp` is logged at that level, otherwise a `[TRACE]`/`[DEBUG]`/`[INFO]`/
`[WARN]`/`[ERROR]` prefix sets it (no prefix: Debug). Both forms are offered; text is the default.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

from shoes_vz.core.logs import TRACE, JSONFormatter, hclog_level, record_fields

NAME = "shoes-vz-plugin"
_LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}

logger = logging.getLogger("shoes_vz.plugin")


class TextFormatter(logging.Formatter):
    """`[INFO]  shoes-vz-plugin: message: key=value ...` (hclog's own text layout, sans timestamp)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"[{hclog_level(record.levelno)}]".ljust(8)
        line = f"{prefix}{NAME}: {record.getMessage()}"
        kv = record_fields(record)
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


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route the plugin's log (and Python warnings) to stderr, one line per record."""
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter(NAME) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    logging.captureWarnings(True)
