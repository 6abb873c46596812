"""README's configuration section is made from the settings classes, and stays in step with them."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shoes_vz import config_doc
from shoes_vz.config import AgentSettings, ServerSettings, load
from shoes_vz.plugin import settings as plugin_settings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def test_readme_configuration_reference_is_current() -> None:
    text = README.read_text()
    assert config_doc.rewrite(text) == text, "README's configuration reference is out of date: run `make docs`"


@pytest.mark.parametrize("cls", [ServerSettings, AgentSettings])
def test_every_setting_has_a_description(cls: type[BaseSettings]) -> None:
    undocumented = [name for name, f in cls.model_fields.items() if not (f.description or "").strip()]
    assert not undocumented, f"give these a Field(description=...): {undocumented}"


def test_an_undocumented_setting_stops_the_generator() -> None:
    class Example(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="EXAMPLE_")
        documented: int = Field(1, description="has one")
        bare: int = 2

    with pytest.raises(config_doc.UndocumentedSetting, match=r"example\.bare has no description"):
        config_doc.reference((("example", Example),))


def rows_of(reference: str, table: str) -> dict[str, list[str]]:
    section = reference.split(f"`[{table}]`", 1)[1].split("\n\n`[", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return {cells[0].strip(" `"): [c.strip() for c in cells] for cells in rows}


@pytest.mark.parametrize(("table", "cls", "prefix"), [("server", ServerSettings, "SHOESVZ_SERVER_"),
                                                      ("agent", AgentSettings, "SHOESVZ_AGENT_")])
def test_reference_lists_every_key_with_type_default_and_variable(table: str, cls: type[BaseSettings],
                                                                  prefix: str) -> None:
    rows = rows_of(config_doc.reference(), table)
    assert set(rows) == set(cls.model_fields)
    for name, (_, kind, default, env, description) in rows.items():
        assert env.startswith(f"`{prefix}{name.upper()}`")
        assert kind and default and description, name


def test_types_bounds_and_defaults_read_as_toml() -> None:
    rows = rows_of(config_doc.reference(), "agent")
    assert rows["max_runners"][1:3] == ["integer (≥ 1, ≤ 64)", "`2`"]
    assert rows["tls_ca"][1:3] == ["path, optional", "unset"]
    assert rows["allow_copy"][1:3] == ["boolean", "`false`"]
    assert rows["templates_dir"][2] == '`"/opt/myshoes/vz/templates"`'


def test_machine_dependent_defaults_are_described_not_evaluated() -> None:
    rows = rows_of(config_doc.reference(), "agent")
    assert rows["driver"][2] == "vz on macOS, sim elsewhere"  # the same README on a Mac and on Linux
    assert rows_of(config_doc.reference(), "server")["resource_types"][1:4] == [
        "table", "`{}`", "`SHOESVZ_SERVER_RESOURCE_TYPES` (JSON)"]


def docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoes_vz.config_doc", *args], capture_output=True, text=True,
                          timeout=60)


def test_make_docs_check_fails_on_a_stale_readme_and_docs_repairs_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = README.read_text()
    readme.write_text(re.sub(r"^\| `max_runners` \|.*\n", "", text, flags=re.M))

    stale = docs("--check", "--readme", str(readme))
    assert stale.returncode == 1 and "make docs" in stale.stderr
    assert docs("--readme", str(readme)).returncode == 0
    assert readme.read_text() == text
    assert docs("--check", "--readme", str(readme)).returncode == 0


def test_a_readme_without_the_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# nothing to fill in\n")
    done = docs("--readme", str(readme))
    assert done.returncode == 1 and "markers" in done.stderr
    assert readme.read_text() == "# nothing to fill in\n"


def test_readme_example_is_valid_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SHOESVZ_")]:
        monkeypatch.delenv(name)
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "shoes-vz.toml"
    path.write_text(example)
    server, agent = load(ServerSettings, path), load(AgentSettings, path)
    assert server.resource_types == {"small": "macos-15", "large": "macos-15-big"}
    assert agent.server_addr == "server.example:50051" and agent.max_runners == 2


def plugin_variables_read() -> set[str]:
    """Every SHOESVZ_* name the plugin's settings code mentions, docstrings aside."""
    tree = ast.parse(Path(plugin_settings.__file__).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and re.fullmatch(r"SHOESVZ_[A-Z_]+", n.value)}


def table_variables(text: str) -> set[str]:
    return set(re.findall(r"^\| `(SHOESVZ_[A-Z_]+)` \|", text, flags=re.M))


def test_every_plugin_variable_is_documented() -> None:
    read = plugin_variables_read()
    assert "SHOESVZ_SERVER_ADDR" in read and "SHOESVZ_PLUGIN_LOG_FORMAT" in read
    assert table_variables(plugin_settings.__doc__ or "") == read, "plugin/settings.py's docstring table"
    assert table_variables((REPO / "docs" / "myshoes.md").read_text()) == read, "docs/myshoes.md's table"
