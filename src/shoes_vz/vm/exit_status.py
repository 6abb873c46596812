"""Exit statuses of `shoes-vz vm run`; the agent maps them to runner states."""

from __future__ import annotations

from enum import IntEnum


class VMExit(IntEnum):
    STOPPED = 0          # the guest stopped (asked to, or by itself)
    CRASHED = 1          # an unexpected exception in the vm process
    USAGE = 2            # bad arguments
    GUEST_ERROR = 10     # the VM stopped with an error (VZ didStopWithError, lost network)
    CONFIG_ERROR = 11    # the bundle/configuration is invalid (validate failed, missing file)
    CAPACITY = 12        # every host VM slot is held (by other processes): the host is full
    LOCKED = 13          # another vm process holds the bundle
    START_FAILED = 14    # start (or restore) failed
    # The framework refused for capacity (VZ code 6) although this process held a host VM slot, so
    # fewer VMs than the limit run by shoes-vz's count: a VM outside shoes-vz, or Apple's VM quota
    # leaking after guest shutdowns (only a reboot clears it). The host needs attention.
    HOST_QUOTA = 15

    @property
    def is_capacity(self) -> bool:
        return self in (VMExit.CAPACITY, VMExit.HOST_QUOTA)


_TEXT = {
    VMExit.CAPACITY: "capacity (every host VM slot is held)",
    VMExit.HOST_QUOTA: "host quota (the framework refused a VM while fewer than the limit run: a VM outside "
                       "shoes-vz, or a leaked quota that needs a reboot)",
}


def describe(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code}"
    try:
        status = VMExit(code)
    except ValueError:
        return f"exit status {code}"
    return _TEXT.get(status, status.name.lower().replace("_", " "))


def is_capacity(code: int | None) -> bool:
    try:
        return code is not None and VMExit(code).is_capacity
    except ValueError:
        return False
