"""Resource types as myshoes names them (DESIGN §3.1)."""

from __future__ import annotations

from shoes_vz.core.errors import InvalidInput
from shoes_vz.core.logsafe import shown

RESOURCE_TYPES: tuple[str, ...] = (
    "nano", "micro", "small", "medium", "large", "xlarge", "2xlarge", "3xlarge", "4xlarge",
)
# upstream shoes-vz spells the big ones differently
ALIASES = {"xlarge2": "2xlarge", "xlarge3": "3xlarge", "xlarge4": "4xlarge"}


def canonical_resource_type(value: str) -> str:
    """myshoes' name for `value` (case-insensitive; upstream's aliases accepted)."""
    name = value.strip().lower()
    name = ALIASES.get(name, name)
    if name not in RESOURCE_TYPES:
        raise InvalidInput(
            f"resource_type {shown(value, 40)} is unknown; expected one of {', '.join(RESOURCE_TYPES)}"
        )
    return name


def normalize_resource_type(value: str, default: str) -> str:
    """myshoes' name for a requested resource type; empty or "unknown" means the configured default."""
    if value.strip().lower() in ("", "unknown"):
        value = default
    return canonical_resource_type(value)
