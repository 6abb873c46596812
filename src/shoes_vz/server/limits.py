"""What an agent may send: lengths, character sets and counts of every AgentService field.

A message that breaks a limit is refused whole (InvalidInput → INVALID_ARGUMENT, nothing stored),
with a message naming the field and the limit. Text that is only shown, never matched (a runner's
error, a host condition's message), is capped instead of refused: an honest agent's long error must
not cost it its registration. The numbers are in docs/security.md §5.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from shoes_vz.core import ids
from shoes_vz.core.errors import InvalidInput
from shoes_vz.core.logsafe import shown
from shoes_vz.wire import agent_pb2 as pb

# gRPC, both directions: a create command carries a setup_script of up to 1 MiB
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
MAX_AGENT_RUNNERS = 64          # AgentSettings.max_runners' own bound
MAX_TEMPLATES = 64
MAX_RESOURCE_TYPES = 16         # per template: myshoes' nine names and upstream's aliases fit
MAX_RUNNERS_PER_REPORT = 2 * MAX_AGENT_RUNNERS  # live runners plus those just failed and gone
MAX_ACKS_PER_REPORT = 256
MAX_CONDITIONS = 16
MAX_CPU_CORES = 4096
MAX_MEMORY_BYTES = 1 << 50
MAX_SECONDS = 86400.0           # a phase timing longer than a day is not a measurement
MAX_ERROR_CHARS = 4096          # kept of a runner's error or an ack's error
MAX_CONDITION_CHARS = 2048      # kept of a host condition's message
MAX_TIMESTAMP = 253402300799    # 9999-12-31, the last second protobuf's Timestamp can hold

HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]{0,253}")
VERSION_RE = re.compile(r"[A-Za-z0-9._+:~-]{0,64}")
DIGEST_RE = re.compile(r"[A-Za-z0-9:._-]{0,128}")
RESOURCE_TYPE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
REQUEST_ID_RE = re.compile(r"[0-9a-f]{1,64}")
REASON_RE = re.compile(r"[a-z0-9_]{1,64}")
MAC_RE = re.compile(r"([0-9A-Fa-f]{1,2}:){5}[0-9A-Fa-f]{1,2}")
FACT_CHARS = 128                # os, arch, driver, agent_version: printable, shown only


def _match(rule: re.Pattern[str], value: str, field: str, what: str) -> None:
    if not rule.fullmatch(value):
        raise InvalidInput(f"{field} {shown(value)} is invalid: {what}")


def _count(items: Iterable[object], limit: int, field: str) -> None:
    n = len(list(items))
    if n > limit:
        raise InvalidInput(f"{n} {field} in one message; the limit is {limit}")


def _range(value: float, low: float, high: float, field: str) -> None:
    if not (low <= value <= high):  # NaN fails both
        raise InvalidInput(f"{field} {value!r} is out of range {low:g}..{high:g}")


def _timestamp(ts: Timestamp, field: str) -> None:
    if not (0 <= ts.seconds <= MAX_TIMESTAMP and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidInput(f"{field} is not a time ({ts.seconds}s {ts.nanos}ns)")


def _fact(value: str, field: str) -> None:
    if len(value) > FACT_CHARS or not value.isprintable():
        raise InvalidInput(f"{field} {shown(value)} is invalid: up to {FACT_CHARS} printable characters")


def capped(text: str, limit: int) -> str:
    """Shown-only text (a runner's error) as the store keeps it."""
    return text if len(text) <= limit else text[:limit] + f"…(+{len(text) - limit} chars)"


def check_ip(value: str, field: str = "ip_address") -> None:
    """A runner's address: empty (not known yet) or one IPv4/IPv6 address a host can be."""
    if not value:
        return
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(f"{field} {shown(value)} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise InvalidInput(f"{field} {value} cannot be a runner's address")


def check_templates(templates: Iterable[pb.Template]) -> None:
    templates = list(templates)
    _count(templates, MAX_TEMPLATES, "templates")
    for t in templates:
        ids.validate_template_name(t.name)
        _match(VERSION_RE, t.version, f"template {t.name} version", "up to 64 of A-Z a-z 0-9 . _ + : ~ -")
        _match(DIGEST_RE, t.digest, f"template {t.name} digest", "up to 128 of A-Z a-z 0-9 : . _ -")
        _count(t.resource_types, MAX_RESOURCE_TYPES, f"resource types of template {t.name}")
        for rt in t.resource_types:
            _match(RESOURCE_TYPE_RE, rt, f"template {t.name} resource type", "1..32 of A-Z a-z 0-9 _ -")
        _range(t.cpu_cores, 0, MAX_CPU_CORES, f"template {t.name} cpu_cores")
        _range(t.memory_bytes, 0, MAX_MEMORY_BYTES, f"template {t.name} memory_bytes")
        _range(t.warm_slots, 0, MAX_AGENT_RUNNERS, f"template {t.name} warm_slots")
        _range(t.free_warm_slots, 0, t.warm_slots, f"template {t.name} free_warm_slots")


def check_enroll(req: pb.EnrollRequest) -> None:
    ids.validate_agent_id(req.agent_id)
    _match(HOSTNAME_RE, req.hostname, "hostname", "up to 253 of A-Z a-z 0-9 . _ -")


def check_register(req: pb.RegisterAgentRequest) -> None:
    if req.agent_id:  # empty: the authenticated agent's own
        ids.validate_agent_id(req.agent_id)
    _match(HOSTNAME_RE, req.hostname, "hostname", "up to 253 of A-Z a-z 0-9 . _ -")
    _range(req.capacity.max_runners, 0, MAX_AGENT_RUNNERS, "capacity.max_runners")
    _range(req.capacity.cpu_cores, 0, MAX_CPU_CORES, "capacity.cpu_cores")
    _range(req.capacity.memory_bytes, 0, MAX_MEMORY_BYTES, "capacity.memory_bytes")
    for name in ("os", "arch", "driver", "agent_version"):
        _fact(getattr(req.host, name), f"host.{name}")
    check_templates(req.templates)


def check_runner(r: pb.Runner) -> None:
    _match(ids.RUNNER_ID_RE, r.runner_id, "runner_id", "16 hex digits, as the server made it")
    if r.runner_name:
        ids.validate_runner_name(r.runner_name)
    if r.agent_id:
        ids.validate_agent_id(r.agent_id)
    check_ip(r.ip_address, f"runner {r.runner_id} ip_address")
    if r.mac_address:
        _match(MAC_RE, r.mac_address, f"runner {r.runner_id} mac_address", "six ':'-separated hex octets")
    if r.template:
        ids.validate_template_name(r.template)
    _timestamp(r.created_at, f"runner {r.runner_id} created_at")
    if r.resource_type:
        _match(RESOURCE_TYPE_RE, r.resource_type, f"runner {r.runner_id} resource_type", "1..32 of A-Z a-z 0-9 _ -")
    for name in ("clone_seconds", "boot_to_ssh_seconds", "total_seconds"):
        value = getattr(r.timings, name)
        if not math.isfinite(value):
            raise InvalidInput(f"runner {r.runner_id} timings.{name} is {value!r}")
        _range(value, 0, MAX_SECONDS, f"runner {r.runner_id} timings.{name}")


def check_sync(req: pb.SyncRequest) -> None:
    """Every field of one Sync message (the identity binding is checked apart: server/binding.py)."""
    if req.agent_id:
        ids.validate_agent_id(req.agent_id)
    _range(req.active_runners, 0, MAX_RUNNERS_PER_REPORT, "active_runners")
    _count(req.runners, MAX_RUNNERS_PER_REPORT, "runners")
    for r in req.runners:
        check_runner(r)
    _count(req.acks, MAX_ACKS_PER_REPORT, "acks")
    for a in req.acks:
        _match(REQUEST_ID_RE, a.request_id, "ack request_id", "1..64 hex digits, as the server made it")
    if req.HasField("templates"):
        check_templates(req.templates.templates)
    if req.HasField("conditions"):
        _count(req.conditions.conditions, MAX_CONDITIONS, "host conditions")
        for c in req.conditions.conditions:
            if c.reason:
                _match(REASON_RE, c.reason, "host condition reason", "1..64 of a-z 0-9 _")
            _timestamp(c.since, f"host condition {c.reason} since")


__all__ = [
    "MAX_ACKS_PER_REPORT", "MAX_AGENT_RUNNERS", "MAX_CONDITION_CHARS", "MAX_ERROR_CHARS", "MAX_MESSAGE_BYTES",
    "MAX_RUNNERS_PER_REPORT", "MAX_TEMPLATES", "capped", "check_enroll", "check_ip", "check_register",
    "check_runner", "check_sync", "check_templates",
]
