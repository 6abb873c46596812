"""Identifiers and input limits (DESIGN §3.1, §9). The only place that formats or parses ids."""

from __future__ import annotations

import re
import secrets

from shoes_vz.core.errors import InvalidInput
from shoes_vz.core.logsafe import shown

SHOES_TYPE = "shoes-vz"
CLOUD_ID_PREFIX = "shoes-vz-"
RUNNER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUNNER_ID_RE = re.compile(r"^[0-9a-f]{16}$")
# an agent's id names it in logs, metrics and the server's store: short, printable, no separators
AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# a template's name is its directory under templates_dir: no path separators, never hidden
TEMPLATE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
MAX_SETUP_SCRIPT_BYTES = 1024 * 1024
MAX_LABELS = 64
MAX_LABEL_CHARS = 256


def new_runner_id() -> str:
    """A server-generated runner id; also the bundle's directory name, never a user string."""
    return secrets.token_hex(8)


def cloud_id(runner_id: str) -> str:
    return CLOUD_ID_PREFIX + runner_id


def runner_id_from_cloud_id(value: str) -> str | None:
    """The runner id inside a cloud_id, or None when it cannot be one of ours."""
    if not value.startswith(CLOUD_ID_PREFIX):
        return None
    rid = value[len(CLOUD_ID_PREFIX) :]
    return rid if RUNNER_ID_RE.fullmatch(rid) else None


def validate_runner_name(name: str) -> None:
    if not RUNNER_NAME_RE.fullmatch(name):  # `$` alone would accept a trailing newline
        raise InvalidInput(
            f"runner_name {shown(name, 140)} is invalid: it must match {RUNNER_NAME_RE.pattern}"
        )


def new_agent_id() -> str:
    """An agent's id, made once per host and kept in its state directory."""
    return "agent-" + secrets.token_hex(8)


def validate_agent_id(agent_id: str) -> None:
    if not AGENT_ID_RE.fullmatch(agent_id):
        raise InvalidInput(
            f"agent_id {shown(agent_id)} is invalid: 1..64 letters, digits, '.', '_', '-', starting with a letter "
            "or digit"
        )


def validate_template_name(name: str) -> None:
    if not TEMPLATE_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"template name {shown(name, 140)} is invalid: use 1..128 letters, digits, '.', '_', '-' and do "
            "not start with '.'"
        )


def validate_setup_script(script: str) -> None:
    size = len(script.encode())
    if size > MAX_SETUP_SCRIPT_BYTES:
        raise InvalidInput(f"setup_script is {size} bytes; the limit is {MAX_SETUP_SCRIPT_BYTES} bytes")
    if "\x00" in script:
        raise InvalidInput("setup_script contains a NUL byte")


def validate_labels(labels: list[str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"{len(labels)} labels given; the limit is {MAX_LABELS}")
    for label in labels:
        if not label or len(label) > MAX_LABEL_CHARS or any(c in label for c in "\x00\n\r"):
            raise InvalidInput(
                f"label {shown(label, 40)} is invalid: 1..{MAX_LABEL_CHARS} characters, no control characters"
            )
