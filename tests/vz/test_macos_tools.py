"""doctor's check logic with injected probes, sign-python's command construction, identity files."""

from __future__ import annotations

import json
import plistlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shoes_vz.cli.macos import register
from shoes_vz.core.errors import BundleError, ShoesVzError
from shoes_vz.macos.doctor import Level, Probes, has_fatal, run_checks
from shoes_vz.macos.sign import ENTITLEMENT, real_interpreter_image, sign_command, sign_python
from shoes_vz.vm.identity_files import (
    is_placeholder,
    new_machine_identifier_file,
    read_data_representation,
    write_data_representation,
)


def good_probes(**over: Any) -> Probes:
    base: dict[str, Any] = dict(
        system=lambda: "Darwin", macos_version=lambda: (26, 5), machine=lambda: "arm64",
        translated=lambda: False, vz_supported=lambda: True, entitlement_error=lambda: None,
        device_of=lambda p: 1, can_clone=lambda p: True, lease_seconds=lambda: 600,
        keychain_unlocked=lambda: True, local_network_ranges=lambda: ["192.168.0.0/16"])
    base.update(over)
    return Probes(**base)


def levels(probes: Probes) -> dict[str, Level]:
    return {c.name: c.level for c in run_checks(probes, Path("/t"), Path("/r"))}


def test_all_good() -> None:
    checks = run_checks(good_probes(), Path("/t"), Path("/r"))
    assert not has_fatal(checks) and all(c.level is Level.OK for c in checks)
    assert [c.name for c in checks] == ["platform", "macos-version", "apple-silicon", "virtualization",
                                        "entitlement", "clone-volume", "dhcp-lease-time", "login-keychain",
                                        "local-network"]


def test_linux_is_fatal_not_a_crash() -> None:
    checks = run_checks(Probes(), Path("/t"), Path("/r"))  # the real probes, on Linux
    assert [(c.name, c.level) for c in checks] == [("platform", Level.FATAL)]
    assert "not macOS" in checks[0].message and "sim" in checks[0].fix


@pytest.mark.parametrize(
    ("over", "name", "level", "fix"),
    [
        ({"macos_version": lambda: (13, 6)}, "macos-version", Level.FATAL, "update macOS"),
        ({"macos_version": lambda: (15, 2)}, "macos-version", Level.WARN, "update macOS"),
        ({"machine": lambda: "x86_64"}, "apple-silicon", Level.FATAL, "arm64"),
        ({"translated": lambda: True}, "apple-silicon", Level.FATAL, "arm64"),
        ({"vz_supported": lambda: False}, "virtualization", Level.FATAL, "bare-metal"),
        ({"entitlement_error": lambda: f"The process doesn’t have the “{ENTITLEMENT}” entitlement."},
         "entitlement", Level.FATAL, "shoes-vz sign-python"),
        ({"device_of": lambda p: 1 if p == Path("/t") else 2}, "clone-volume", Level.FATAL, "one APFS"),
        ({"can_clone": lambda p: False}, "clone-volume", Level.FATAL, "APFS"),
        ({"lease_seconds": lambda: 86400}, "dhcp-lease-time", Level.WARN, "DHCPLeaseTimeSecs -int 600"),
        ({"keychain_unlocked": lambda: False}, "login-keychain", Level.FATAL, "unlock-keychain"),
        ({"local_network_ranges": lambda: ["10.0.0.0/8"]}, "local-network", Level.WARN,
         "AllowedEthernetLocalNetworkAddresses"),
    ],
)
def test_each_failing_check_says_its_fix(over: dict[str, Any], name: str, level: Level, fix: str) -> None:
    checks = {c.name: c for c in run_checks(good_probes(**over), Path("/t"), Path("/r"))}
    assert checks[name].level is level
    assert fix in checks[name].fix


def test_missing_pyobjc_is_fatal() -> None:
    def missing() -> bool:
        raise ModuleNotFoundError("No module named 'Virtualization'")

    assert levels(good_probes(vz_supported=missing))["pyobjc"] is Level.FATAL


def test_keychain_check_only_from_15() -> None:
    assert "login-keychain" not in levels(good_probes(macos_version=lambda: (14, 6)))


# -- sign-python -----------------------------------------------------------------------------------

def test_real_image_framework_and_not() -> None:
    fw = real_interpreter_image("/v/bin/python", "Python", "/Library/Frameworks/Python.framework/Versions/3.12")
    assert fw == Path("/Library/Frameworks/Python.framework/Versions/3.12/Resources/Python.app/Contents/"
                      "MacOS/Python")
    assert real_interpreter_image("/usr/bin/env", "", "/x") == Path("/usr/bin/env").resolve()


def test_sign_command() -> None:
    assert sign_command(Path("/p/Python"), Path("/tmp/e.plist")) == [
        "/usr/bin/codesign", "--sign", "-", "--force", "--entitlements", "/tmp/e.plist", "/p/Python"]


class FakeCodesign:
    def __init__(self, entitlements: dict[str, Any] | None) -> None:
        self.entitlements = entitlements
        self.calls: list[list[str]] = []
        self.signed_with: dict[str, Any] | None = None

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(argv))
        if "--sign" in argv:
            self.signed_with = plistlib.loads(Path(argv[argv.index("--entitlements") + 1]).read_bytes())
            self.entitlements = self.signed_with
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        if self.entitlements is None:
            return subprocess.CompletedProcess(argv, 1, b"", b"code object is not signed at all")
        return subprocess.CompletedProcess(argv, 0, b"Executable=/p\n" + plistlib.dumps(self.entitlements), b"")


def test_sign_adds_entitlement_keeping_others(tmp_path: Path) -> None:
    image = tmp_path / "Python"
    image.write_bytes(b"\xcf\xfa\xed\xfe")
    codesign = FakeCodesign({"com.apple.security.cs.disable-library-validation": True})
    result = sign_python(image, run=codesign, platform="darwin")
    assert result.action == "signed" and "signed" in result.describe()
    assert codesign.signed_with == {"com.apple.security.cs.disable-library-validation": True, ENTITLEMENT: True}
    assert [c[1] for c in result.commands] == ["-d", "--sign", "-d"]


def test_sign_is_idempotent(tmp_path: Path) -> None:
    image = tmp_path / "Python"
    image.write_bytes(b"x")
    codesign = FakeCodesign({ENTITLEMENT: True})
    result = sign_python(image, run=codesign, platform="darwin")
    assert result.action == "already-signed" and len(codesign.calls) == 1


def test_sign_unsigned_image_and_errors(tmp_path: Path) -> None:
    image = tmp_path / "Python"
    image.write_bytes(b"x")
    assert sign_python(image, run=FakeCodesign(None), platform="darwin").action == "signed"
    with pytest.raises(ShoesVzError, match="for macOS"):
        sign_python(image, run=FakeCodesign(None), platform="linux")
    with pytest.raises(ShoesVzError, match="does not exist"):
        sign_python(tmp_path / "nope", run=FakeCodesign(None), platform="darwin")


def test_cli_commands_register_and_run_on_linux() -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 1 and "not macOS" in res.output
    res = runner.invoke(app, ["sign-python"])
    assert res.exit_code == 1


# -- identity files ------------------------------------------------------------------------------

def test_identity_files_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "MachineIdentifier.json"
    new_machine_identifier_file(p)
    assert is_placeholder(p) and read_data_representation(p) is None
    write_data_representation(p, b"\x01\x02")
    assert read_data_representation(p) == b"\x01\x02"
    assert json.loads(p.read_text()) == {"dataRepresentation": "AQI="}
    p.write_text(json.dumps({"ecid": 12345}))  # the agent's legacy fallback: still a placeholder
    assert is_placeholder(p)
    for bad in ("[]", "{}", '{"dataRepresentation": "***"}', "not json"):
        p.write_text(bad)
        with pytest.raises(BundleError):
            read_data_representation(p)
    with pytest.raises(BundleError, match="missing"):
        read_data_representation(tmp_path / "nope.json")
