"""Fixtures for every test directory; the helpers live in `stack_fixtures.py`.

The session runs inside the repository boundary (`repo_boundary.py`): touching a path beside the
checkout fails it. At the end of the session nothing of the namespaced sim may be left either: no
link named by one of this session's lease files (bridges, veths), no named network namespace of
ours, no guest PID 1. The benchmarks that tests start run with TMPDIR inside the session's base
temp, so they count too.
"""

from __future__ import annotations

import pytest
import repo_boundary
from repo_boundary import pytest_sessionstart, pytest_terminal_summary
from simvm import guest_processes, named_netns, project_links, wait_until
from stack_fixtures import any_sim_stack, no_clone_dir, sim_stack

__all__ = ["any_sim_stack", "no_clone_dir", "pytest_sessionfinish", "pytest_sessionstart", "pytest_terminal_summary",
           "sim_stack"]


def _leftovers(base: str) -> list[str]:
    from pathlib import Path

    left = []
    for name in project_links():
        try:
            alias = Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
        except OSError:
            continue
        if base in alias:
            left.append(f"link {name} ({alias})")
    left += [f"netns {n}" for n in named_netns() if n.startswith("svz")]
    for pid in guest_processes():
        try:
            if base.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(f"guest process {pid}")
        except OSError:
            continue
    return left


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    repo_boundary.pytest_sessionfinish(session, exitstatus)
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    base = str(factory.getbasetemp())
    # a sim network outlives its last VM by its linger (2 s by default)
    left = wait_until(lambda: not _leftovers(base), timeout=15.0, interval=0.2)
    if not left:
        leftovers = _leftovers(base)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("namespaced sim leftovers after the session: " + "; ".join(leftovers), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
