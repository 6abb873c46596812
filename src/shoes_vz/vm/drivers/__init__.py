"""VM drivers behind `shoes-vz vm run`. Only `shoes_vz.vm.process` imports this package.

`sim` runs anywhere (see `sim.py`: a namespaced guest as root on Linux, else a loopback one); `vz`
needs macOS and PyObjC and is imported lazily so Linux never touches it. The base names are
imported lazily too: the sim's helper programs (`python -m shoes_vz.vm.drivers.sim_init`, …) start
often and need none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in ("Driver", "DriverEvents", "DriverOptions"):
        from shoes_vz.vm.drivers import base

        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["DRIVERS", "Driver", "DriverEvents", "DriverOptions", "driver_class"]
