"""Fixtures for every test directory; the helpers live in `stack_fixtures.py`."""

from stack_fixtures import no_clone_dir, sim_stack

__all__ = ["no_clone_dir", "sim_stack"]
