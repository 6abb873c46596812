"""doctor's check logic with injected probes; the interpreter image from real files (fake venv and
framework layouts) and the kernel; sign-python's codesign and probe argv through an injected runner
(codesign does not exist here); identity files."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shoes_vz.cli.macos import register
from shoes_vz.core.errors import BundleError, ShoesVzError
from shoes_vz.macos.doctor import Check, HostUser, Level, Probes, has_fatal, run_checks, vm_user
from shoes_vz.macos.interpreter import (
    LAUNCHER_MARK,
    SignRecord,
    fingerprint,
    record_path,
    resolve_image,
    running_image,
)
from shoes_vz.macos.sign import ENTITLEMENT, check_new_process, probe_command, sign_command, sign_python
from shoes_vz.vm.identity import new_mac
from shoes_vz.vm.identity_files import (
    is_placeholder,
    new_machine_identifier_file,
    read_data_representation,
    write_data_representation,
)
from shoes_vz.vm.leases import Lease, format_leases

HOME = Path("/Users/svc")


def good_probes(**over: Any) -> Probes:
    base: dict[str, Any] = dict(
        system=lambda: "Darwin", macos_version=lambda: (26, 5), machine=lambda: "arm64",
        translated=lambda: False, euid=lambda: 501, vm_user=lambda: HostUser("svc", 501, HOME),
        console_uid=lambda: 501, vz_supported=lambda: True, entitlement_error=lambda: None,
        image=lambda: Path("/p/Python"), sign_record=lambda home: None,
        device_of=lambda p: 1, can_clone=lambda p: True, lease_seconds=lambda: 600, leases=lambda p: [],
        keychain_problem=lambda path: None, local_network_ranges=lambda: ["192.168.0.0/16"])
    base.update(over)
    return Probes(**base)


def checks_of(probes: Probes) -> dict[str, Check]:
    return {c.name: c for c in run_checks(probes, Path("/t"), Path("/r"))}


def levels(probes: Probes) -> dict[str, Level]:
    return {name: c.level for name, c in checks_of(probes).items()}


def test_all_good() -> None:
    checks = run_checks(good_probes(), Path("/t"), Path("/r"))
    assert not has_fatal(checks) and all(c.level is Level.OK for c in checks)
    assert [c.name for c in checks] == ["platform", "user", "macos-version", "apple-silicon", "virtualization",
                                        "entitlement", "clone-volume", "dhcp-lease-time", "dhcp-leases",
                                        "login-keychain",
                                        "gui-login", "local-network"]


def test_linux_is_fatal_not_a_crash() -> None:
    checks = run_checks(Probes(), Path("/t"), Path("/r"))  # the real probes, on Linux
    assert [(c.name, c.level) for c in checks] == [("platform", Level.FATAL)]
    assert "not macOS" in checks[0].message and "sim" in checks[0].fix


@pytest.mark.parametrize(
    ("over", "name", "level", "fix"),
    [
        ({"euid": lambda: 0}, "user", Level.FATAL, "docs/macos-host.md"),
        ({"macos_version": lambda: (13, 6)}, "macos-version", Level.FATAL, "update macOS"),
        ({"macos_version": lambda: (15, 2)}, "macos-version", Level.WARN, "update macOS"),
        ({"machine": lambda: "x86_64"}, "apple-silicon", Level.FATAL, "arm64"),
        ({"translated": lambda: True}, "apple-silicon", Level.FATAL, "arm64"),
        ({"vz_supported": lambda: False}, "virtualization", Level.FATAL, "bare-metal"),
        ({"entitlement_error": lambda: f"The process doesn’t have the “{ENTITLEMENT}” entitlement."},
         "entitlement", Level.FATAL, "shoes-vz sign-python"),
        ({"device_of": lambda p: 1 if p == Path("/t") else 2}, "clone-volume", Level.FATAL, "one APFS"),
        ({"can_clone": lambda p: False}, "clone-volume", Level.FATAL, "APFS"),
        ({"keychain_problem": lambda p: "security: SecKeychainGetStatus: The user name or passphrase you entered "
                                        "is not correct."}, "login-keychain", Level.FATAL, "unlock-keychain"),
        ({"console_uid": lambda: 0}, "gui-login", Level.WARN, "Automatically log in as"),
        ({"local_network_ranges": lambda: ["10.0.0.0/8"]}, "local-network", Level.WARN,
         "AllowedEthernetLocalNetworkAddresses"),
    ],
)
def test_each_failing_check_says_its_fix(over: dict[str, Any], name: str, level: Level, fix: str) -> None:
    checks = checks_of(good_probes(**over))
    assert checks[name].level is level
    assert fix in checks[name].fix


def test_root_is_fatal_and_names_the_cause() -> None:
    check = checks_of(good_probes(euid=lambda: 0))["user"]
    assert "running as root" in check.message and "Code=1" in check.message and "keychain" in check.message


def test_the_keychain_checked_is_the_vm_users_not_roots() -> None:
    seen: list[Path] = []
    probes = good_probes(euid=lambda: 0, vm_user=lambda: HostUser("svc", 501, HOME),
                         keychain_problem=lambda path: seen.append(path))
    checks = checks_of(probes)
    assert seen == [HOME / "Library/Keychains/login.keychain-db"]
    assert "svc's login keychain is unlocked" in checks["login-keychain"].message


def test_vm_user_is_the_effective_user_or_the_sudo_caller() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert vm_user(nobody.pw_uid, None) == HostUser("nobody", nobody.pw_uid, Path(nobody.pw_dir))
    assert vm_user(0, "nobody") == HostUser("nobody", nobody.pw_uid, Path(nobody.pw_dir))  # sudo: the caller's
    assert vm_user(0, None) is None and vm_user(0, "root") is None  # never root's /var/root
    checks = checks_of(good_probes(euid=lambda: 0, vm_user=lambda: None))
    assert checks["login-keychain"].level is Level.WARN and "cannot tell which user" in checks["login-keychain"].message


def test_a_locked_keychain_names_errsec_interaction_not_allowed() -> None:
    text = "security: SecKeychainCopySettings: User interaction is not allowed."
    check = checks_of(good_probes(keychain_problem=lambda p: text))["login-keychain"]
    assert check.level is Level.FATAL and "-25308" in check.message and "svc" in check.message


def test_no_gui_login_is_a_warning_naming_who_owns_the_console() -> None:
    check = checks_of(good_probes(console_uid=lambda: 0))["gui-login"]
    assert check.level is Level.WARN and "console belongs to root" in check.message and "15.2" in check.message


def test_missing_pyobjc_is_fatal() -> None:
    def missing() -> bool:
        raise ModuleNotFoundError("No module named 'Virtualization'")

    assert levels(good_probes(vz_supported=missing))["pyobjc"] is Level.FATAL


def test_keychain_and_gui_checks_only_from_15() -> None:
    found = levels(good_probes(macos_version=lambda: (14, 6)))
    assert "login-keychain" not in found and "gui-login" not in found


ENTITLEMENT_TEXT = f"The process doesn’t have the “{ENTITLEMENT}” entitlement."


def test_doctor_says_when_an_upgrade_replaced_the_signed_image(tmp_path: Path) -> None:
    image = tmp_path / "Python"
    image.write_bytes(b"signed build 3.12.1")
    record = SignRecord.of(image)
    image.write_bytes(b"brew upgrade: 3.12.2, unsigned")
    check = checks_of(good_probes(entitlement_error=lambda: ENTITLEMENT_TEXT, image=lambda: image,
                                  sign_record=lambda home: record))["entitlement"]
    assert check.level is Level.FATAL and str(image) in check.message
    assert "changed since" in check.message and "interpreter upgrade" in check.message
    assert check.fix == "shoes-vz sign-python"


def test_doctor_says_when_another_image_was_signed(tmp_path: Path) -> None:
    signed, runs = tmp_path / "a" / "Python", tmp_path / "venv" / "python"
    for p in (signed, runs):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    check = checks_of(good_probes(entitlement_error=lambda: ENTITLEMENT_TEXT, image=lambda: runs,
                                  sign_record=lambda home: SignRecord.of(signed)))["entitlement"]
    assert f"sign-python signed {signed}" in check.message and f"this interpreter runs {runs}" in check.message


def test_sign_python_and_doctor_agree_where_the_record_lives(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")  # the macOS default: the VM user's ~/.shoes-vz/state
    assert record_path(tmp_path / "home") == tmp_path / "home/.shoes-vz/state/signed-python.json"
    image = tmp_path / "Python"
    image.write_bytes(b"x")
    SignRecord.of(image).write(record_path(tmp_path / "home"))
    probes = good_probes(entitlement_error=lambda: ENTITLEMENT_TEXT, image=lambda: image,
                         vm_user=lambda: HostUser("svc", 501, tmp_path / "home"),
                         sign_record=Probes().sign_record)
    image.write_bytes(b"y")
    assert "changed since" in checks_of(probes)["entitlement"].message


# -- the interpreter image ---------------------------------------------------------------------------

def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


LAUNCHER = b"\xcf\xfa\xed\xfe launcher: exec %s" % LAUNCHER_MARK + b"Python"
APP_BINARY = b"\xcf\xfa\xed\xfe python main, links @executable_path/../../../../Python"


@pytest.fixture
def framework(tmp_path: Path) -> Path:
    """A python.org-style framework: bin/python3.12 is the launcher, Python.app's binary the image."""
    version = tmp_path / "Library/Frameworks/Python.framework/Versions/3.12"
    write(version / "bin/python3.12", LAUNCHER)
    write(version / "Resources/Python.app/Contents/MacOS/Python", APP_BINARY)
    return version


def test_framework_stdlib_venv_resolves_to_python_app(framework: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(framework / "bin/python3.12")
    assert resolve_image(str(venv / "python"), "Python", str(framework)) == \
        framework / "Resources/Python.app/Contents/MacOS/Python"


def test_framework_venv_copies_of_the_launcher_resolve_to_the_base_app(framework: Path, tmp_path: Path) -> None:
    copy = write(tmp_path / "venv/bin/python", LAUNCHER)  # python -m venv --copies
    app = framework / "Resources/Python.app/Contents/MacOS/Python"
    assert resolve_image(str(copy), "Python", str(framework)) == app


def test_virtualenv_copy_of_the_app_binary_is_the_image(framework: Path, tmp_path: Path) -> None:
    copy = write(tmp_path / "venv/bin/python", APP_BINARY)  # virtualenv's fix_mach_o copy, re-signed ad hoc
    assert resolve_image(str(copy), "Python", str(framework)) == copy


def test_homebrew_symlink_chain_resolves_into_the_cellar(tmp_path: Path) -> None:
    version = tmp_path / "opt/homebrew/Cellar/python@3.12/3.12.1/Frameworks/Python.framework/Versions/3.12"
    write(version / "bin/python3.12", LAUNCHER)
    link = tmp_path / "opt/homebrew/bin/python3"
    link.parent.mkdir(parents=True)
    link.symlink_to(version / "bin/python3.12")
    assert resolve_image(str(link), "Python", "/elsewhere") == version / "Resources/Python.app/Contents/MacOS/Python"


def test_non_framework_uv_python_is_the_real_binary(tmp_path: Path) -> None:
    real = write(tmp_path / "uv/python/cpython-3.12-macos-aarch64/bin/python3.12", b"\xcf\xfa\xed\xfe uv")
    venv = tmp_path / "venv/bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(real)
    assert resolve_image(str(venv / "python"), "", "/x") == real


def test_running_image_is_what_the_kernel_runs() -> None:
    assert running_image() == Path(os.path.realpath(sys.executable))  # this venv's python → the base binary
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert running_image(child.pid) == Path(os.path.realpath(shutil.which("sleep") or "sleep"))
    finally:
        child.kill()
        child.wait()


def test_the_probe_runs_as_a_new_process_and_reports_its_image() -> None:
    done = subprocess.run(probe_command(), capture_output=True, timeout=60)
    answer = json.loads(done.stdout)
    assert answer["image"] == os.path.realpath(sys.executable)
    assert "cannot ask Virtualization.framework" in answer["problem"]  # no PyObjC here: said, not crashed
    with pytest.raises(ShoesVzError, match="reports: cannot ask Virtualization.framework"):
        check_new_process(Path(os.path.realpath(sys.executable)), lambda argv: subprocess.run(
            list(argv), capture_output=True, timeout=60), [])


# -- sign-python -----------------------------------------------------------------------------------

def test_sign_command() -> None:
    assert sign_command(Path("/p/Python"), Path("/tmp/e.plist")) == [
        "/usr/bin/codesign", "--sign", "-", "--force", "--entitlements", "/tmp/e.plist", "/p/Python"]


class FakeCodesign:
    """codesign (does not exist here) answered by argv; the probe answers as the new process would."""

    def __init__(self, entitlements: dict[str, Any] | None, probe_image: Path | None = None,
                 probe_problem: str | None = None) -> None:
        self.entitlements = entitlements
        self.calls: list[list[str]] = []
        self.signed_with: dict[str, Any] | None = None
        self.probe_image, self.probe_problem = probe_image, probe_problem

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(argv))
        if list(argv[1:]) == ["-m", "shoes_vz.macos.interpreter"]:
            image = self.probe_image or Path(self.calls[0][-1])
            answer = {"image": str(image), "problem": self.probe_problem}
            return subprocess.CompletedProcess(argv, 0, json.dumps(answer).encode() + b"\n", b"")
        assert argv[0] == "/usr/bin/codesign"
        if "--sign" in argv:
            self.signed_with = plistlib.loads(Path(argv[argv.index("--entitlements") + 1]).read_bytes())
            self.entitlements = self.signed_with
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        if self.entitlements is None:
            return subprocess.CompletedProcess(argv, 1, b"", b"code object is not signed at all")
        return subprocess.CompletedProcess(argv, 0, b"Executable=/p\n" + plistlib.dumps(self.entitlements), b"")


def test_sign_adds_entitlement_keeping_others_and_checks_a_new_process(tmp_path: Path) -> None:
    image = write(tmp_path / "venv/bin/python", APP_BINARY)  # virtualenv's copy: the image itself
    codesign = FakeCodesign({"com.apple.security.cs.disable-library-validation": True})
    record = tmp_path / "state" / "signed-python.json"
    result = sign_python(image, run=codesign, platform="darwin", record=record)
    assert result.action == "signed" and "signed" in result.describe()
    assert codesign.signed_with == {"com.apple.security.cs.disable-library-validation": True, ENTITLEMENT: True}
    assert codesign.calls == [
        ["/usr/bin/codesign", "-d", "--entitlements", "-", "--xml", str(image)],
        codesign.calls[1],  # the signing argv (its plist is a temp file)
        ["/usr/bin/codesign", "-d", "--entitlements", "-", "--xml", str(image)],
        [sys.executable, "-m", "shoes_vz.macos.interpreter"],
    ]
    assert codesign.calls[1][:5] == ["/usr/bin/codesign", "--sign", "-", "--force", "--entitlements"]
    assert codesign.calls[1][-1] == str(image)
    saved = SignRecord.read(record)
    assert saved is not None and saved.image == str(image) and saved.sha256 == fingerprint(image)


def test_sign_is_idempotent_but_still_checks(tmp_path: Path) -> None:
    image = write(tmp_path / "Python", b"x")
    codesign = FakeCodesign({ENTITLEMENT: True})
    result = sign_python(image, run=codesign, platform="darwin")
    assert result.action == "already-signed"
    assert [c[1] for c in codesign.calls] == ["-d", "-m"]


def test_signing_the_wrong_image_is_caught_by_the_new_process(framework: Path, tmp_path: Path) -> None:
    launcher = framework / "bin/python3.12"
    app = framework / "Resources/Python.app/Contents/MacOS/Python"
    with pytest.raises(ShoesVzError, match=f"signed {launcher}, but a new interpreter process runs {app}"):
        sign_python(launcher, run=FakeCodesign(None, probe_image=app), platform="darwin")


def test_a_new_process_without_the_entitlement_fails_sign_python(tmp_path: Path) -> None:
    image = write(tmp_path / "Python", b"x")
    record = tmp_path / "record.json"
    with pytest.raises(ShoesVzError, match="yet a new interpreter process reports: .*entitlement"):
        sign_python(image, run=FakeCodesign(None, probe_problem=ENTITLEMENT_TEXT), platform="darwin", record=record)
    assert not record.exists(), "nothing is recorded for a signature that does not work"


def test_sign_unsigned_image_and_errors(tmp_path: Path) -> None:
    image = write(tmp_path / "Python", b"x")
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


def _write_bootpd_leases(path: Path, held: int, expired: int) -> None:
    """A real /var/db/dhcpd_leases (bootpd's format, as vm/leases.py writes and reads it)."""
    now = datetime.now(UTC)
    leases = [Lease(f"192.168.64.{2 + i}", new_mac(set()), now + timedelta(hours=12)) for i in range(held)]
    leases += [Lease(f"192.168.64.{2 + held + i}", new_mac(set()), now - timedelta(hours=1)) for i in range(expired)]
    path.write_text(format_leases(leases))


@pytest.mark.parametrize(("held", "expired", "level"), [(5, 100, Level.OK), (210, 20, Level.WARN)])
def test_doctor_reports_bootpds_pool_use_from_its_lease_file(tmp_path: Path, held: int, expired: int,
                                                             level: Level) -> None:
    lease_file = tmp_path / "dhcpd_leases"
    _write_bootpd_leases(lease_file, held, expired)
    checks = {c.name: c for c in run_checks(good_probes(leases=Probes().leases), Path("/t"), Path("/r"),
                                            lease_file=lease_file)}
    c = checks["dhcp-leases"]
    assert c.level is level and f"{held} of bootpd's 253 addresses held by unexpired leases" in c.message
    if level is Level.WARN:  # with when it eases, and the fix
        assert "new MACs may soon get no address" in c.message and "expires" in c.message
        assert "DHCPLeaseTimeSecs" in c.fix


def test_doctor_says_when_the_lease_file_cannot_be_read(tmp_path: Path) -> None:
    broken = tmp_path / "dhcpd_leases"
    broken.write_text("{\n\tip_address=192.168.64.2\n")  # cut short
    checks = {c.name: c for c in run_checks(good_probes(leases=Probes().leases), Path("/t"), Path("/r"),
                                            lease_file=broken)}
    assert checks["dhcp-leases"].level is Level.WARN and "could not read" in checks["dhcp-leases"].message
    missing = {c.name: c for c in run_checks(good_probes(leases=Probes().leases), Path("/t"), Path("/r"),
                                             lease_file=tmp_path / "none")}  # bootpd makes it on demand
    assert missing["dhcp-leases"].level is Level.OK and "0 of bootpd's 253" in missing["dhcp-leases"].message


@pytest.mark.parametrize(("recycling", "level"), [(True, Level.OK), (False, Level.WARN)])
def test_a_day_long_lease_is_a_problem_only_with_a_fresh_mac_per_runner(recycling: bool, level: Level) -> None:
    checks = {c.name: c for c in run_checks(good_probes(lease_seconds=lambda: 86400), Path("/t"), Path("/r"),
                                            mac_recycling=recycling)}
    c = checks["dhcp-lease-time"]
    assert c.level is level
    if level is Level.WARN:  # the rate it sustains, and both fixes
        assert "253 runners per 86400s (11 an hour)" in c.message
        assert "agent.mac_recycling = true" in c.fix and "DHCPLeaseTimeSecs -int 600" in c.fix
