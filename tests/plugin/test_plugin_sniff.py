"""myshoes' check on the PLUGIN file (Go's http.DetectContentType) and the installed zipapp."""

from __future__ import annotations

import os
import sys
import zipapp
from pathlib import Path

import pytest
from sniff_cases import CASES

from shoes_vz.plugin.install import InstallError, install_plugin
from shoes_vz.plugin.sniff import OCTET_STREAM, TEXT_PLAIN, detect_content_type, sniff_file


@pytest.mark.parametrize(("name", "data", "want"), CASES, ids=[c[0] for c in CASES])
def test_detect_content_type_matches_go(name: str, data: bytes, want: str) -> None:
    assert detect_content_type(data) == want


def test_installed_plugin_sniffs_as_octet_stream(plugin_path: Path) -> None:
    assert sniff_file(plugin_path) == OCTET_STREAM
    head = plugin_path.read_bytes()[:512]
    assert head.startswith(f"#!{sys.executable}\n".encode())
    assert os.access(plugin_path, os.X_OK)


def test_a_bare_script_sniffs_as_text(tmp_path: Path) -> None:
    script = tmp_path / "plugin.py"
    script.write_text("#!/usr/bin/env python3\nfrom shoes_vz.plugin.main import main\nmain()\n")
    assert sniff_file(script) == TEXT_PLAIN


def test_a_zipapp_without_shebang_sniffs_as_zip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "__main__.py").write_text("print('hi')\n")
    zipapp.create_archive(src, tmp_path / "app.pyz")
    assert sniff_file(tmp_path / "app.pyz") == "application/zip"


def test_install_replaces_atomically_and_is_repeatable(tmp_path: Path) -> None:
    out = tmp_path / "bin" / "shoes-vz-plugin"
    first = install_plugin(out)
    second = install_plugin(out)
    assert first == second == out
    assert [p.name for p in out.parent.iterdir()] == ["shoes-vz-plugin"]


@pytest.mark.parametrize("interpreter", ["relative/python", "/opt/my python/bin/python", "/" + "x" * 300])
def test_install_refuses_interpreters_a_shebang_cannot_name(tmp_path: Path, interpreter: str) -> None:
    with pytest.raises(InstallError):
        install_plugin(tmp_path / "p", interpreter=interpreter)
    assert not (tmp_path / "p").exists()
