"""Fixtures for every test directory; the helpers live in `stack_fixtures.py`. The session runs inside
the repository boundary (`repo_boundary.py`): touching a path beside the checkout fails it."""

from repo_boundary import pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary
from stack_fixtures import no_clone_dir, sim_stack

__all__ = ["no_clone_dir", "pytest_sessionfinish", "pytest_sessionstart", "pytest_terminal_summary", "sim_stack"]
