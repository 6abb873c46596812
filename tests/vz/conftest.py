"""Fixtures for the vz driver: the generated fake PyObjC modules (installed per test) and a bundle."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakevz import SDK, FakeVZ, load_sdk
from vzharness import make_bundle

from shoes_vz.macos import install as macos_install
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.drivers import vz as vz_driver
from shoes_vz.vm.drivers import vz_host


@functools.cache
def sdk() -> SDK:
    return load_sdk()


@pytest.fixture
def fake_vz(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVZ]:
    """Generated Virtualization/Foundation/dispatch/objc installed in sys.modules for one test."""
    fake = FakeVZ(sdk())
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vz_driver, "host_macos", lambda: fake.knobs.host)
    monkeypatch.setattr(macos_install, "host_macos", lambda: fake.knobs.host)
    monkeypatch.setattr(vz_host, "effective_uid", lambda: fake.knobs.euid)
    vz_driver.delegate_class.cache_clear()
    yield fake
    fake.close()
    assert not fake.escaped, f"exceptions escaped into libdispatch (a crash on a Mac): {fake.escaped!r}"
    assert not fake.violations, f"VZ calls off the VM queue: {fake.violations}"


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return make_bundle(tmp_path)
