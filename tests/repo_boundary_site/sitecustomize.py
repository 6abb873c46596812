"""On PYTHONPATH during the tests (tests/repo_boundary.py puts it there): every Python process the tests
start runs the repository-boundary audit hook its parent describes in SHOESVZ_TEST_BOUNDARY.

It shadows the interpreter's own sitecustomize, which in a venv on Debian/Ubuntu only installs
Ubuntu's apport crash hook."""

import importlib.util
import json
import os
import sys

if os.environ.get("SHOESVZ_TEST_BOUNDARY"):
    _spec = importlib.util.spec_from_file_location(
        "_shoes_vz_repo_boundary", json.loads(os.environ["SHOESVZ_TEST_BOUNDARY"])["module"])
    if _spec is not None and _spec.loader is not None:
        _module = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        _module.install_from_env()
