"""The shoes-vz error tree.

    ShoesVzError
    ├── ConfigError            bad configuration (file, env, flags)
    ├── InvalidInput           input that can never succeed (gRPC INVALID_ARGUMENT)
    ├── Forbidden              a known caller asks for what its role may not do (gRPC PERMISSION_DENIED)
    ├── NotFound               unknown runner / cloud_id (gRPC NOT_FOUND)
    ├── CapacityExhausted      no free slot now; retry later (gRPC RESOURCE_EXHAUSTED)
    ├── CloneError             the volume cannot clone (EXDEV, ENOTSUP, ...)
    │   └── DiskBelowReserve   its free space is below agent.disk_reserve (retried elsewhere)
    ├── BundleError            a runner bundle is missing, locked or malformed
    ├── DriverError            the VM driver failed (carries an exit status)
    ├── TemplateError          a template is missing, writable or fails its digest
    ├── RunnerFailed           a runner step failed or timed out (the runner goes to ERROR)
    ├── InUse                  another live process holds a lock, a port or a state directory
    └── Interrupted            Ctrl-C or SIGTERM stopped a command (after cleaning up)
"""

from __future__ import annotations


class ShoesVzError(Exception):
    """Base of every error shoes-vz raises on purpose."""


class ConfigError(ShoesVzError):
    pass


class InvalidInput(ShoesVzError):
    pass


class Forbidden(ShoesVzError):
    """A caller that proved who it is asks for something that is not its own (another agent's
    stream, runner or command; an enrolled id; a service of another role)."""


class NotFound(ShoesVzError):
    pass


class CapacityExhausted(ShoesVzError):
    pass


class CloneError(ShoesVzError):
    pass


class DiskBelowReserve(CloneError):
    pass


class BundleError(ShoesVzError):
    pass


class DriverError(ShoesVzError):
    """A driver failure. `capacity` marks host-capacity failures (VZ error code 6)."""

    def __init__(self, message: str, *, capacity: bool = False) -> None:
        super().__init__(message)
        self.capacity = capacity


class TemplateError(ShoesVzError):
    pass


class RunnerFailed(ShoesVzError):
    pass


class InUse(ShoesVzError):
    """Another live process holds what this one needs (a lock file, a port); the message names it."""


class Interrupted(ShoesVzError):
    """A command was stopped by Ctrl-C or SIGTERM; the message says what was cleaned up."""
