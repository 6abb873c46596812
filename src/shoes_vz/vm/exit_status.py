"""Exit statuses of `shoes-vz vm run`; the agent maps them to runner states."""

from __future__ import annotations

from enum import IntEnum


class VMExit(IntEnum):
    STOPPED = 0          # the guest stopped (asked to, or by itself)
    CRASHED = 1          # an unexpected exception in the vm process
    USAGE = 2            # bad arguments
    GUEST_ERROR = 10     # the VM stopped with an error (VZ didStopWithError)
    CONFIG_ERROR = 11    # the bundle/configuration is invalid (validate failed, missing file)
    CAPACITY = 12        # the host refuses another VM (VZErrorVirtualMachineLimitExceeded)
    LOCKED = 13          # another vm process holds the bundle
    START_FAILED = 14    # start (or restore) failed

    @property
    def is_capacity(self) -> bool:
        return self is VMExit.CAPACITY


def describe(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code}"
    try:
        return VMExit(code).name.lower().replace("_", " ")
    except ValueError:
        return f"exit status {code}"
