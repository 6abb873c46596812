"""VM drivers behind `shoes-vz vm run`. Only `shoes_vz.vm.process` imports this package.

`sim` runs anywhere (a real sshd + runner-agent on a loopback address); `vz` needs macOS and
PyObjC and is imported lazily so Linux never touches it.
"""

from __future__ import annotations

import importlib

from shoes_vz.vm.drivers.base import Driver, DriverEvents, DriverOptions

DRIVERS = {"sim": "shoes_vz.vm.drivers.sim:SimDriver", "vz": "shoes_vz.vm.drivers.vz:VZDriver"}


def driver_class(name: str) -> type[Driver]:
    try:
        target = DRIVERS[name]
    except KeyError:
        raise ValueError(f"unknown driver {name!r}; choose one of {', '.join(DRIVERS)}") from None
    module, _, attr = target.partition(":")
    cls: type[Driver] = getattr(importlib.import_module(module), attr)
    return cls


__all__ = ["DRIVERS", "Driver", "DriverEvents", "DriverOptions", "driver_class"]
