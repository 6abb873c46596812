"""Fixtures for every test directory; the helpers live in `stack_fixtures.py`."""

from stack_fixtures import sim_stack

__all__ = ["sim_stack"]
