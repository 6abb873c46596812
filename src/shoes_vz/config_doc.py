"""README's configuration reference, made from the settings classes in `config.py` (`make docs`).

    python -m shoes_vz.config_doc            # rewrite the marked region of README.md
    python -m shoes_vz.config_doc --check    # exit 1 when README.md is not what this writes

Every key of every table, with its type, default, environment variable and description; a field
without a description is an error, so a new setting cannot arrive undocumented.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from shoes_vz.config import AdminSettings, AgentSettings, ServerSettings

BEGIN = "<!-- configuration reference: made by `make docs` from src/shoes_vz/config.py; edit there -->"
END = "<!-- end of configuration reference -->"
TABLES: tuple[tuple[str, type[BaseSettings]], ...] = (("server", ServerSettings), ("agent", AgentSettings),
                                                   ("admin", AdminSettings))
README = Path(__file__).resolve().parents[2] / "README.md"  # in a checkout (editable install)

_TYPE_NAMES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))  # annotated_types' Gt, Ge, Lt, Le


class UndocumentedSetting(ValueError):
    pass


def type_name(annotation: Any) -> str:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        inner = " or ".join(type_name(a) for a in args)
        return f"{inner}, optional" if optional else inner
    if get_origin(annotation) is dict or annotation is dict:
        return "table"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def bounds(field: FieldInfo) -> str:
    found = [f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in _BOUNDS
             if getattr(m, attr, None) is not None]
    return f" ({', '.join(found)})" if found else ""


def toml_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, dict) and not value:
        return "`{}`"
    return f"`{value!r}`"


def default_of(field: FieldInfo) -> str:
    factory = field.default_factory
    if isinstance(factory, types.FunctionType):  # ours depend on the machine, and say so in a docstring
        return (factory.__doc__ or "").strip() or toml_value(factory())
    if factory is not None:
        return toml_value(factory())  # type: ignore[call-arg]
    return "required" if field.default is PydanticUndefined else toml_value(field.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")  # `<x>` would be an HTML tag


def table_rows(table: str, cls: type[BaseSettings]) -> list[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    rows = ["| key | type | default | environment | description |", "|---|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        if not (field.description or "").strip():
            raise UndocumentedSetting(f"{table}.{name} has no description: give its Field a description=")
        env = f"`{(prefix + name).upper()}`"
        kind = type_name(field.annotation) + bounds(field)
        if kind == "table":
            env += " (JSON)"
        cells = [f"`{name}`", kind, default_of(field), env, field.description.strip()]  # type: ignore[union-attr]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def reference(tables: tuple[tuple[str, type[BaseSettings]], ...] = TABLES) -> str:
    """The generated region, markers included."""
    lines = [BEGIN]
    for table, cls in tables:
        lines += ["", f"`[{table}]`", "", *table_rows(table, cls)]
    return "\n".join([*lines, "", END])


def rewrite(text: str, tables: tuple[tuple[str, type[BaseSettings]], ...] = TABLES) -> str:
    """`text` with its generated region replaced; the markers must be there, once each."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"README needs the markers {BEGIN!r} and {END!r}, once each, in that order")
    head, rest = text.split(BEGIN)
    return head + reference(tables) + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoes_vz.config_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README is out of date, change nothing")
    parser.add_argument("--readme", type=Path, default=README, help="the README to rewrite (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.readme.is_file():
        print(f"config_doc: no README at {args.readme} (run from a checkout, or give --readme)", file=sys.stderr)
        return 1
    text = args.readme.read_text()
    try:
        new = rewrite(text)
    except ValueError as e:  # UndocumentedSetting included
        print(f"config_doc: {e}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"config_doc: {args.readme}'s configuration reference is out of date: run `make docs`",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"config_doc: rewrote the configuration reference in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
