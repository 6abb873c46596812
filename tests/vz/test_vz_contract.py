"""CONTRACT: every VZ symbol the driver and the macOS installer use exists in the macOS 26.5 SDK (as
PyObjC records it) and was introduced no later than the driver's MIN_MACOS.

Two nets: a static AST walk of the driver and installer modules (classes, enums and constants read
off the `Virtualization` module, every `selector_with_args_` and delegate method), and the fake's
record of every (class, selector) actually called while the driver runs start, stop, save, restore
the restore fallback, the liveness probe of a restored guest and a replaced network attachment, and
while the installer runs from a local IPSW, from `latest` (over HTTP),
and is cancelled. Enum values carry no `introduced` in the fwinfo (they are compile-time ints that
PyObjC always exposes), so they are checked for existence and value only.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
from fakevz import SDK, FakeVZ, fake_ipsw_bytes, version
from ipswserver import IpswServer
from vzharness import make_bundle, start

import shoes_vz.vm.drivers.vz as vz_module
from shoes_vz.macos import install, install_errors, ipsw_cache
from shoes_vz.vm.drivers import vz_config, vz_errors, vz_runtime
from shoes_vz.vm.exit_status import VMExit
from shoes_vz.vm.host_slots import HostSlots

DRIVER_FILES = [Path(m.__file__) for m in (vz_module, vz_config, vz_errors,  # type: ignore[arg-type]
                                           vz_runtime, install, install_errors, ipsw_cache)]
NOT_VZ = {"fileURLWithPath_"}  # Foundation selectors the driver calls
MIN = ".".join(map(str, vz_module.MIN_MACOS))


def _is_vz_module(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "vz") or \
        (isinstance(node, ast.Attribute) and node.attr == "_vz")


def static_symbols() -> tuple[set[str], set[str]]:
    """(names read off the Virtualization module, selectors with arguments / delegate methods)."""
    names: set[str] = set()
    selectors: set[str] = set()
    for path in DRIVER_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                if _is_vz_module(node.value):
                    names.add(node.attr)
                elif node.attr.endswith("_") and not node.attr.startswith("_") and node.attr not in NOT_VZ:
                    selectors.add(node.attr.replace("_", ":"))
            elif isinstance(node, ast.FunctionDef) and node.name.endswith("_") and not node.name.startswith("_"):
                selectors.add(node.name.replace("_", ":"))
    return names, selectors


def _introduced_somewhere(sdk: SDK, selector: str) -> list[str]:
    found = [m.introduced for c in sdk.classes.values() for m in (*c.instance.values(), *c.klass.values())
             if m.selector == selector]
    found += [m["introduced"] for p in sdk.protocols.values() for m in p["methods"] if m["selector"] == selector]
    return found


def exercise(fake: FakeVZ, root: Path) -> None:
    """Run the driver through every path that talks to VZ."""
    b = make_bundle(root, name="plain")
    h = start(b)
    h.wait_started()
    h.driver.status()
    h.driver.request_stop()
    assert h.result() is VMExit.STOPPED
    w = make_bundle(root, name="warm")
    h = start(w)
    h.wait_started()
    h.driver.save_state()
    assert h.result() is VMExit.STOPPED
    h = start(w)  # restore + resume
    h.wait_started()
    h.driver.force_stop()
    assert h.result() is VMExit.STOPPED
    h = start(w)
    h.wait_started()
    h.driver.save_state()
    h.result()
    fake.knobs.restore_error = ("VZErrorDomain", 12, "restore failed")
    h = start(w)  # restore fails → fresh identity, cold boot
    h.wait_started()
    fake.network_disconnect(fake.vms[-1])  # → a new NAT attachment on the runtime device
    while not any("attached a new NAT attachment" in m for m in h.events.messages):
        time.sleep(0.01)
    fake.guest_shutdown(fake.vms[-1])
    assert h.result() is VMExit.STOPPED
    fake.knobs.restore_error = None
    h = start(make_bundle(root, name="slot", saveable=True))  # a warm-slot build: checked before booting
    h.wait_started()
    h.driver.save_state()
    h.result()
    exercise_install(fake, root)


class _Interrupt:
    def update(self, phase: str, fraction: float) -> None:
        if phase == "install" and fraction > 0:
            raise KeyboardInterrupt


class _Quiet:
    def update(self, phase: str, fraction: float) -> None:
        pass


def exercise_install(fake: FakeVZ, root: Path) -> None:
    """Run the installer through every path that talks to VZ."""
    ipsw = root / "local.ipsw"
    ipsw.write_bytes(fake_ipsw_bytes())
    args = {"cpu_count": 4, "memory_bytes": 8 << 30, "disk_bytes": 1 << 30, "cache_dir": root / "cache",
            "host_slots": HostSlots(root / "vm-slots", 2)}
    local, latest, interrupted = (root / name for name in ("install-local", "install-latest", "install-ctrl-c"))
    for target in (local, latest, interrupted):
        target.mkdir()
    install.install_macos(local, ipsw=str(ipsw), progress=_Quiet(), **args)
    server = IpswServer(fake_ipsw_bytes())
    try:
        fake.knobs.latest_url = server.url
        install.install_macos(latest, ipsw=install.LATEST, progress=_Quiet(), **args)
    finally:
        server.close()
    with pytest.raises(KeyboardInterrupt):
        install.install_macos(interrupted, ipsw=str(ipsw), progress=_Interrupt(), **args)


def test_every_vz_symbol_is_in_the_sdk_and_old_enough(fake_vz: FakeVZ, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "POLL_INTERVAL", 0.002)
    sdk = fake_vz.sdk
    problems: list[str] = []
    names, selectors = static_symbols()
    for name in sorted(names):
        if name in sdk.classes:
            if version(sdk.classes[name].introduced) > version(MIN):
                problems.append(f"class {name} introduced {sdk.classes[name].introduced} > {MIN}")
        elif name in sdk.externs:
            if version(sdk.externs[name]) > version(MIN):
                problems.append(f"constant {name} introduced {sdk.externs[name]} > {MIN}")
        elif name not in sdk.enums:
            problems.append(f"Virtualization.{name} is not in the SDK")
    for sel in sorted(selectors):
        versions = _introduced_somewhere(sdk, sel)
        if not versions:
            problems.append(f"selector {sel} is not in the SDK")
        elif min(versions, key=version) and version(min(versions, key=version)) > version(MIN):
            problems.append(f"selector {sel} introduced {min(versions, key=version)} > {MIN}")

    exercise(fake_vz, tmp_path)
    for key in sorted(fake_vz.used):
        kind, *rest = key
        if kind == "method":
            cls, sel, side = rest
            meth = sdk.find(cls, sel, class_method=side == "class")
            if meth is None and sel in ("new", "init"):  # +[NSObject new] / -[NSObject init]
                intro = sdk.classes[cls].introduced
            elif meth is None:
                problems.append(f"{cls} {side} selector {sel} is not in the SDK")
                continue
            else:
                intro = meth.introduced
            if version(intro) > version(MIN):
                problems.append(f"{cls}.{sel} introduced {intro} > {MIN}")
            if meth is not None and meth.deprecated:
                problems.append(f"{cls}.{sel} is deprecated ({meth.deprecated})")
        elif kind == "class" and version(sdk.classes[rest[0]].introduced) > version(MIN):
            problems.append(f"class {rest[0]} introduced {sdk.classes[rest[0]].introduced} > {MIN}")
        elif kind == "protocol":
            for m in sdk.protocols[rest[0]]["methods"]:
                if m["selector"] in selectors and version(m["introduced"]) > version(MIN):
                    problems.append(f"delegate {m['selector']} introduced {m['introduced']} > {MIN}")

    for code, name in vz_errors.VZ_ERROR_CODES.items():
        if sdk.enums.get(name) != code:
            problems.append(f"vz_errors says {name} = {code}, the SDK says {sdk.enums.get(name)}")

    used = {k for k in fake_vz.used if k[0] != "protocol"} | {("static", n) for n in names | selectors}
    print(f"\nvz contract: {len(names)} module names + {len(selectors)} selectors (static), "
          f"{len(fake_vz.used)} recorded uses, {len(used)} symbols checked against macOS {MIN}")
    assert not problems, "\n".join(problems)
    assert len(selectors) > 20 and len(fake_vz.used) > 60  # the walk really saw the driver
    for sel in ("initWithVirtualMachine:restoreImageURL:", "loadFileURL:completionHandler:",
                "initCreatingStorageAtURL:hardwareModel:options:error:"):
        assert sel in selectors  # ... and the installer
    assert ("method", "VZMacOSRestoreImage", "fetchLatestSupportedWithCompletionHandler:", "class") in fake_vz.used
    assert ("method", "VZMacOSConfigurationRequirements", "minimumSupportedMemorySize", "instance") in fake_vz.used
    for cls, sel in (("VZVirtioSocketDevice", "connectToPort:completionHandler:"),
                     ("VZVirtualMachine", "socketDevices"), ("VZNetworkDevice", "setAttachment:"),
                     ("VZNetworkDevice", "attachment"),
                     ("VZVirtualMachineConfiguration", "validateSaveRestoreSupportWithError:")):
        assert ("method", cls, sel, "instance") in fake_vz.used, f"{cls}.{sel} was not exercised"


def test_min_macos_is_justified_by_what_the_driver_needs(fake_vz: FakeVZ) -> None:
    # save/restore and the Mac keyboard are 14.0: a lower MIN_MACOS would be a lie
    sdk = fake_vz.sdk
    assert sdk.find("VZVirtualMachine", "saveMachineStateToURL:completionHandler:", False).introduced == MIN  # type: ignore[union-attr]
    assert sdk.classes["VZMacKeyboardConfiguration"].introduced == MIN
