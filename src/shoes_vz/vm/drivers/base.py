"""The driver interface: one VM, driven from the `vm run` process.

`run()` is called on the main thread and blocks for the VM's whole life, waiting in short steps so
the main thread keeps taking signals. No driver needs the main thread's run loop: the vz driver
drives its VM from a private serial dispatch queue (why: `vz.py`). The control socket calls
`request_stop`, `force_stop`, `save_state`, `channel`, `cold_boot` and `status` from another
thread; drivers make those thread-safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.exit_status import VMExit


@dataclass(frozen=True)
class DriverOptions:
    """What `vm run` knows besides the bundle. The launch spec itself is in RuntimeMetadata.json."""

    boot_delay: float = 0.0              # sim: seconds before the guest "boots" (models macOS boot)
    restore_delay: float = 0.0           # sim: seconds a restore from State.save takes (models VZ restore)
    lease_file: Path | None = None       # sim: where to write dhcpd_leases-format entries
    stop_grace: float = 10.0             # seconds between requestStop and a hard stop
    restore_timeout: float = 60.0        # vz: restore + resume must finish within this, else a cold boot
    live_timeout: float = 30.0           # vz: a restored guest must show life within this, else a cold boot
    extra: dict[str, Any] = field(default_factory=dict)  # the driver's own options (agent.driver_options)


class DriverEvents(Protocol):
    def started(self) -> None:
        """The VM started (or resumed): boot_to_ssh starts counting now."""

    def log(self, message: str) -> None: ...


class Driver(ABC):
    name: str = ""

    def __init__(self, bundle: Bundle, options: DriverOptions) -> None:
        self.bundle = bundle
        self.options = options

    @classmethod
    def preflight(cls) -> list[str]:
        """What stops this driver from running any VM on this host, each problem with its fix (none:
        []). The agent and `shoes-vz up` ask before they start, so it is said once, not per runner."""
        return []

    @classmethod
    def describe(cls, options: DriverOptions) -> str:
        """One line on what a VM of this driver is on this host (`vm run --describe`)."""
        return f"{cls.name} driver"

    @abstractmethod
    def run(self, events: DriverEvents) -> VMExit:
        """Configure, start (restoring State.save when present), block until the VM is gone."""

    @abstractmethod
    def request_stop(self) -> None:
        """Ask the guest to shut down; `run` returns once it has."""

    @abstractmethod
    def force_stop(self) -> None:
        """Stop the VM at once."""

    def save_state(self) -> None:
        """Pause and save to bundle.saved_state (warm path). Not every driver can."""
        from shoes_vz.core.errors import DriverError

        raise DriverError(f"the {self.name} driver cannot save state")

    def channel(self, line: bytes, timeout: float) -> bytes:
        """One exchange on the guest's runner channel (`vm/channel.py`): `line` out, the guest's
        answer back. ChannelError(retry=True) while the guest does not listen yet."""
        from shoes_vz.vm.channel import ChannelError

        raise ChannelError(f"the {self.name} driver has no runner channel")

    def cold_boot(self, reason: str) -> None:
        """Give up on a restored guest that did not re-announce: boot this bundle cold with a fresh
        MachineIdentifier (DESIGN §12), recording `reason` as the restore's error."""
        from shoes_vz.core.errors import DriverError

        raise DriverError(f"the {self.name} driver cannot cold-boot a restored VM")

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: at least {"state": ...}."""
