"""Write the file myshoes' `PLUGIN` points at.

myshoes refuses a plugin file whose first 512 bytes sniff as text (`http.DetectContentType` must say
`application/octet-stream`), so a bare Python script cannot be the plugin. A zipapp can: a shebang
line naming the interpreter shoes-vz is installed in, then a zip archive whose local-file header holds
binary bytes (Python runs a zip with a prefix just fine). The kernel executes the interpreter
directly, so there is no wrapper process left to hold go-plugin's pipes at Kill() time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipapp
from pathlib import Path

from shoes_vz.plugin.sniff import OCTET_STREAM, sniff_file

MAX_SHEBANG = 255  # Linux BINPRM_BUF_SIZE is 256 since 5.1 (127 before); macOS allows 512

LAUNCHER = '''\
"""shoes-vz-plugin launcher, written by `shoes-vz plugin install`: myshoes' PLUGIN file."""
from shoes_vz.plugin.main import main

raise SystemExit(main())
'''


class InstallError(Exception):
    pass


def install_plugin(output: Path, *, interpreter: str | None = None) -> Path:
    """Write an executable zipapp at `output` that runs shoes-vz-plugin with `interpreter`.

    `interpreter` defaults to this process' own (`sys.executable`, not resolved: a virtualenv's
    `bin/python` symlink is what makes its site-packages importable). Returns the absolute path.
    Raises InstallError if the result would not pass myshoes' file check.
    """
    python = interpreter or sys.executable
    if not python or not os.path.isabs(python):
        raise InstallError(f"interpreter {python!r} is not an absolute path")
    if any(c.isspace() for c in python):
        raise InstallError(f"interpreter path {python!r} contains whitespace; a shebang cannot name it")
    if len(f"#!{python}\n") > MAX_SHEBANG:
        raise InstallError(f"interpreter path {python!r} is too long for a shebang line")
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".shoes-vz-plugin-") as src:
        (Path(src) / "__main__.py").write_text(LAUNCHER)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            zipapp.create_archive(src, tmp, interpreter=python)
            tmp.chmod(0o755)
            kind = sniff_file(tmp)
            if kind != OCTET_STREAM:
                raise InstallError(f"{output} would sniff as {kind!r}; myshoes needs {OCTET_STREAM!r}")
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return output
