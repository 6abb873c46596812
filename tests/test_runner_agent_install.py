"""`shoes-vz-runner-agent install` / `uninstall`: the runner-agent as a LaunchDaemon in a macOS guest.

Everything is installed into a temporary `--root` whose `/usr/bin/python3` is this machine's; the
installed program is then run through its shebang. `--load` and `xcode-select` cannot run here: their
exact argv is checked through injected runners. The interpreter check runs real interpreters.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import shoes_vz.guest.runner_agent as ra

SRC = Path(ra.__file__)
PROGRAM = "usr/local/libexec/shoes-vz-runner-agent"
PLIST = "Library/LaunchDaemons/dev.shoes-vz.runner-agent.plist"
DROPIN = "etc/ssh/sshd_config.d/050-shoes-vz.conf"
MACOS_SSHD_CONFIG = ("# macOS's own (15.x)\nInclude /etc/ssh/sshd_config.d/*\n\n#Port 22\n"
                     "Subsystem\tsftp\t/usr/libexec/sftp-server\n")
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3") or "python3"
GUEST_PYTHON = os.path.abspath(SYSTEM_PYTHON)  # the guest's interpreter: the same path here
DAEMON_PATH = f"{os.path.dirname(GUEST_PYTHON)}:" + ":".join(
    d for d in ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
    if d != os.path.dirname(GUEST_PYTHON))


def place(root: Path, guest_path: str, target: str) -> None:
    """`guest_path` inside the tree `root`, a symlink to `target` on this machine."""
    link = root / guest_path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(target)


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    """A guest tree with /tmp (myshoes' RUNNER_BASE_DIRECTORY), the runner user's home and python3."""
    root = tmp_path / "guest"
    (root / "Users" / "runner").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "sshd_config").write_text(MACOS_SSHD_CONFIG)
    place(root, GUEST_PYTHON, os.path.realpath(SYSTEM_PYTHON))
    return root


def install(guest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("install", "--root", str(guest), "--python", GUEST_PYTHON, *args)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoes_vz.guest.runner_agent", *args],
                          capture_output=True, text=True, timeout=60)


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


class Launchctl:
    """Records launchctl argv and answers with scripted (exit code, output) pairs."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.calls: list[list[str]] = []
        self.answers = list(answers)

    def __call__(self, argv: list[str]) -> tuple[int, str]:
        self.calls.append(argv)
        return self.answers.pop(0) if self.answers else (0, "")


# -- install ----------------------------------------------------------------------------------------


def test_install_writes_the_program_and_a_launch_daemon(guest: Path) -> None:
    done = install(guest)
    assert done.returncode == 0, done.stderr
    program, plist, dropin = guest / PROGRAM, guest / PLIST, guest / DROPIN
    assert done.stdout.splitlines() == [f"wrote {program}", f"wrote {plist}", f"wrote {dropin}"]

    text = program.read_text()
    assert text.startswith(f"#!{GUEST_PYTHON}\n"), "an absolute interpreter, never /usr/bin/env python3"
    assert text.partition("\n")[2] == SRC.read_text(), "the program is this module, byte for byte"
    assert stat.S_IMODE(program.stat().st_mode) == 0o755
    assert stat.S_IMODE(plist.stat().st_mode) == 0o644
    if os.geteuid() == 0:
        assert (program.stat().st_uid, plist.stat().st_uid, plist.stat().st_gid) == (0, 0, 0)

    with open(plist, "rb") as f:
        data = plistlib.load(f)
    assert data == {
        "Label": "dev.shoes-vz.runner-agent",
        "ProgramArguments": ["/usr/local/libexec/shoes-vz-runner-agent", "--notify-url", "auto",
                             "--listen", "0.0.0.0:8080", "--runner-dir", "/tmp/runner",
                             "--channel", "vsock:8079", "--state-dir", "/var/run/shoes-vz"],
        "EnvironmentVariables": {"PATH": DAEMON_PATH},
        "RunAtLoad": True,
        "KeepAlive": True,
        "StandardOutPath": "/var/log/shoes-vz-runner-agent.log",
        "StandardErrorPath": "/var/log/shoes-vz-runner-agent.log",
    }
    assert "UserName" not in data, "runs as root: DHCP renew after a restore needs it"
    # sshd trusts the agent's CA for this boot's runner alone, and serves the per-boot host key first
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o644
    lines = dropin.read_text().splitlines()
    assert lines[1:6] == ["HostKey /var/run/shoes-vz/ssh_host_ed25519_key", "HostKey /etc/ssh/ssh_host_ed25519_key",
                          "TrustedUserCAKeys /var/run/shoes-vz/user_ca.pub",
                          "AuthorizedPrincipalsFile /var/run/shoes-vz/principals", "AuthorizedKeysFile none"]
    assert "PasswordAuthentication no" in lines
    leftovers = [p.name for p in guest.rglob("*.tmp.*")]
    assert not leftovers


def test_install_options_reach_the_plist_and_the_shebang(guest: Path) -> None:
    python = guest / "opt" / "py" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    done = cli("install", "--root", str(guest), "--label", "com.example.agent", "--python", "/opt/py/bin/python3",
               "--notify-url", "auto:9081", "--listen", "0.0.0.0:18080", "--runner-dir", "/tmp/runner")
    assert done.returncode == 0, done.stderr
    assert (guest / PROGRAM).read_text().startswith("#!/opt/py/bin/python3\n")
    data = plistlib.loads((guest / "Library/LaunchDaemons/com.example.agent.plist").read_bytes())
    assert data["Label"] == "com.example.agent"
    assert data["EnvironmentVariables"]["PATH"].startswith("/opt/py/bin:/opt/homebrew/bin:")
    assert data["ProgramArguments"][1:] == ["--notify-url", "auto:9081", "--listen", "0.0.0.0:18080",
                                            "--runner-dir", "/tmp/runner", "--channel", "vsock:8079",
                                            "--state-dir", "/var/run/shoes-vz"]


def test_install_warns_when_sshd_would_ignore_the_dropin(guest: Path) -> None:
    (guest / "etc/ssh/sshd_config").write_text("#Port 22\nPasswordAuthentication yes\n")  # no Include first
    done = install(guest)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("warning: /etc/ssh/sshd_config does not start with `Include "
                                                  "/etc/ssh/sshd_config.d/*`")


def test_the_installed_program_runs_with_the_system_python(guest: Path, tmp_path: Path) -> None:
    assert install(guest).returncode == 0
    program = guest / PROGRAM
    helped = subprocess.run([SYSTEM_PYTHON, "-I", str(program), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0, helped.stderr
    assert "--notify-url" in helped.stdout and "install" in helped.stdout
    # executable through its own shebang, as launchd starts it
    version = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == ra.VERSION, version.stderr

    log = tmp_path / "agent.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([SYSTEM_PYTHON, "-I", str(program), "--listen", "127.0.0.1:0",
                                 "--runner-dir", str(tmp_path / "actions-runner")],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        port = 0
        deadline = time.monotonic() + 20
        while not port and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"listening address=127\.0\.0\.1:(\d+)", log.read_text())
            port = int(m.group(1)) if m else 0
            time.sleep(0.02)
        assert port, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            assert resp.status == 200
            assert resp.read() == b'{"status": "ok", "version": "%s"}' % ra.VERSION.encode()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()


def test_reinstall_is_idempotent_and_rewrites_only_what_changed(guest: Path) -> None:
    assert install(guest).returncode == 0
    program, plist, dropin = guest / PROGRAM, guest / PLIST, guest / DROPIN
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in (program, plist)}

    again = install(guest)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"unchanged {program}", f"unchanged {plist}", f"unchanged {dropin}"]
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in (program, plist)} == before

    # installing from the installed copy gives the same program (its shebang is replaced, not doubled)
    from_copy = subprocess.run([SYSTEM_PYTHON, str(program), "install", "--root", str(guest), "--python", GUEST_PYTHON],
                               capture_output=True, text=True, timeout=60)
    assert from_copy.returncode == 0, from_copy.stderr
    assert from_copy.stdout.splitlines() == [f"unchanged {program}", f"unchanged {plist}", f"unchanged {dropin}"]

    changed = install(guest, "--listen", "0.0.0.0:9999")
    assert changed.stdout.splitlines() == [f"unchanged {program}", f"unchanged {dropin}", f"wrote {plist}"]
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"][4] == "0.0.0.0:9999"

    program.chmod(0o777)  # a wrong mode is repaired too
    assert f"wrote {program}" in install(guest).stdout.splitlines()
    assert stat.S_IMODE(program.stat().st_mode) == 0o755


def test_dry_run_prints_and_writes_nothing(guest: Path) -> None:
    before = tree(guest)
    done = install(guest, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"would write {guest / PROGRAM} (mode 0755, owner root:wheel" in done.stdout
    assert f"would write {guest / PLIST} (mode 0644, owner root:wheel" in done.stdout
    xml = done.stdout[done.stdout.index("<?xml"):]
    assert plistlib.loads(xml.encode())["Label"] == "dev.shoes-vz.runner-agent"
    assert tree(guest) == before


def test_dry_run_load_lists_the_launchctl_commands(guest: Path) -> None:
    out: list[str] = []
    code = run_main(["install", "--dry-run", "--load"], guest, Launchctl(), out, platform="linux", euid=501)
    assert code == 0
    assert [line for line in out if line.startswith("would run")] == [
        "would run launchctl bootout system/dev.shoes-vz.runner-agent",
        "would run launchctl enable system/dev.shoes-vz.runner-agent",
        "would run launchctl bootstrap system /Library/LaunchDaemons/dev.shoes-vz.runner-agent.plist",
    ]
    assert not (guest / "Library").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--python", GUEST_PYTHON, "--runner-dir", "/Users/nobody/actions-runner"],
         "/Users/nobody does not exist in the guest"),
        (["--python", GUEST_PYTHON, "--runner-dir", "actions-runner"], "give an absolute guest path"),
        (["--python", "python3"], "not an executable file in the guest"),
        (["--python", "/no/such/python3"], "not an executable file in the guest"),
        ([], "--python: with --root, give the guest's interpreter as an absolute guest path"),
        (["--label", "../evil"], "--label '../evil'"),
        (["--load"], "--load acts on the running system; it cannot be combined with --root"),
    ],
)
def test_install_refuses_bad_input_and_writes_nothing(guest: Path, args: list[str], message: str) -> None:
    before = tree(guest)
    done = cli("install", "--root", str(guest), *args)
    assert done.returncode == 1
    assert done.stderr.startswith("shoes-vz-runner-agent install: error: ") and message in done.stderr, done.stderr
    assert done.stdout == ""
    assert tree(guest) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--notify-url", "ftp://host/x"], "--notify-url must be auto[:PORT] or http://host[:port]/path"),
        (["--notify-url", "auto:http"], "--notify-url auto:PORT wants a port number"),
        (["--listen", "0.0.0.0:http"], "--listen wants host:port"),
    ],
)
def test_install_usage_errors(guest: Path, args: list[str], message: str) -> None:
    before = tree(guest)
    done = cli("install", "--root", str(guest), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert tree(guest) == before


def test_install_into_a_missing_root_is_an_error(tmp_path: Path) -> None:
    done = cli("install", "--root", str(tmp_path / "nope"), "--python", GUEST_PYTHON)
    assert done.returncode == 1 and f"--root {tmp_path / 'nope'}: no such directory" in done.stderr
    assert not (tmp_path / "nope").exists()


# -- in-process: root, launchctl and the platform injected ------------------------------------------


class Checker:
    """The interpreter check: `xcode-select -p` answered as scripted (it does not exist here), every
    other argv really run (as install would)."""

    def __init__(self, xcode_select: tuple[int, str] = (0, "/Library/Developer/CommandLineTools")) -> None:
        self.xcode_select = xcode_select
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> tuple[int, str]:
        self.calls.append(argv)
        return self.xcode_select if argv[0] == "/usr/bin/xcode-select" else ra.run_check(argv)


def run_main(argv: list[str], guest: Path, launchctl: Launchctl, out: list[str], *, platform: str = "darwin",
             euid: int = 0, check: Checker | None = None, python: str | None = GUEST_PYTHON) -> int:
    """install_main with `guest` standing in for the running system (so --load is allowed)."""
    import contextlib
    import io

    buf = io.StringIO()
    extra = ["--python", python] if python is not None and argv[0] == "install" else []
    with contextlib.redirect_stdout(buf):
        code = ra.install_main([*argv, *extra, "--root", str(guest)], run=launchctl, euid=euid, platform=platform,
                               sleep=lambda s: None, system_root=str(guest), check=check or Checker())
    out.extend(buf.getvalue().splitlines())
    return code


def test_non_root_cannot_install_into_the_running_system(guest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main(["install"], guest, Launchctl(), [], euid=501)
    assert code == 1
    assert "must run as root to write /Library/LaunchDaemons: use sudo" in capsys.readouterr().err
    assert {k for k, v in tree(guest).items() if v is not None} == {"etc/ssh/sshd_config"}  # the guest's own
    assert not (guest / "Library").exists() and not (guest / "usr/local").exists()


def test_load_builds_the_exact_launchctl_argv(guest: Path) -> None:
    launchctl = Launchctl((113, "Boot-out failed: 113: Could not find specified service"))
    out: list[str] = []
    assert run_main(["install", "--load"], guest, launchctl, out) == 0
    assert launchctl.calls == [
        ["launchctl", "bootout", "system/dev.shoes-vz.runner-agent"],
        ["launchctl", "enable", "system/dev.shoes-vz.runner-agent"],
        ["launchctl", "bootstrap", "system", "/Library/LaunchDaemons/dev.shoes-vz.runner-agent.plist"],
    ]
    assert "ran launchctl bootout system/dev.shoes-vz.runner-agent (it was not loaded)" in out
    assert out[-1] == "loaded dev.shoes-vz.runner-agent; its log is /var/log/shoes-vz-runner-agent.log"
    assert (guest / PLIST).is_file()


def test_load_retries_bootstrap_while_the_old_instance_goes_away(guest: Path) -> None:
    launchctl = Launchctl((0, ""), (0, ""), (5, "Bootstrap failed: 5: Input/output error"), (0, ""))
    assert run_main(["install", "--load"], guest, launchctl, []) == 0
    assert [c[1] for c in launchctl.calls] == ["bootout", "enable", "bootstrap", "bootstrap"]


def test_load_failure_is_reported(guest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    launchctl = Launchctl((1, "Boot-out failed: 1: Operation not permitted"))
    assert run_main(["install", "--load"], guest, launchctl, []) == 1
    err = capsys.readouterr().err
    assert "the files are installed, but loading failed: `launchctl bootout system/dev.shoes-vz.runner-agent` " \
           "failed (1): Boot-out failed: 1: Operation not permitted" in err
    assert len(launchctl.calls) == 1, "no bootstrap after a failed bootout"


def test_load_needs_macos(guest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    launchctl = Launchctl()
    assert run_main(["install", "--load"], guest, launchctl, [], platform="linux") == 1
    assert "--load needs launchctl: run it inside the macOS guest" in capsys.readouterr().err
    assert launchctl.calls == [] and not (guest / "Library").exists()


# -- the interpreter: absolute, and checked to run non-interactively --------------------------------


def script(guest: Path, guest_path: str, body: str) -> None:
    path = guest / guest_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_the_clt_stub_without_the_tools_is_refused(guest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    place(guest, "/usr/bin/python3", os.path.realpath(SYSTEM_PYTHON))  # a python3 that works, at the stub's path
    check = Checker(xcode_select=(2, "xcode-select: error: unable to get active developer directory"))
    assert run_main(["install", "--load"], guest, Launchctl(), [], check=check, python="/usr/bin/python3") == 1
    err = capsys.readouterr().err
    assert "/usr/bin/python3 is the Xcode Command Line Tools stub and the tools are not installed" in err
    assert "xcode-select --install" in err and "--python" in err
    assert check.calls == [["/usr/bin/xcode-select", "-p"]], "refused before running the stub"
    assert not (guest / PLIST).exists() and not (guest / PROGRAM).exists()


def test_the_clt_python_with_the_tools_is_accepted(guest: Path) -> None:
    place(guest, "/usr/bin/python3", os.path.realpath(SYSTEM_PYTHON))
    check, out = Checker(), []
    assert run_main(["install"], guest, Launchctl(), out, check=check, python="/usr/bin/python3") == 0
    assert check.calls[0] == ["/usr/bin/xcode-select", "-p"]
    assert check.calls[1][0] == str(guest / "usr/bin/python3") and check.calls[1][1:3] == ["-I", "-c"]
    assert "checked /usr/bin/python3: it runs non-interactively" in out
    assert (guest / PROGRAM).read_text().startswith("#!/usr/bin/python3\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo 'xcode-select: note: No developer tools were found, requesting install.' >&2; exit 1",
         "does not run non-interactively (exit 1): xcode-select: note: No developer tools were found"),
        ("read answer", "does not run non-interactively (exit 1)"),  # wants a terminal: stdin is closed
        ("exec sleep 30", "no answer within 1s (waiting for input?)"),
        ("echo 2.7", "is Python 2.7; the runner-agent needs 3.9 or later"),
    ],
)
def test_an_interpreter_that_cannot_run_unattended_is_refused(guest: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str], body: str,
                                                               message: str) -> None:
    monkeypatch.setattr(ra, "PYTHON_CHECK_TIMEOUT", 1.0)
    script(guest, "/opt/py/bin/python3", body)
    t0 = time.monotonic()
    assert run_main(["install"], guest, Launchctl(), [], python="/opt/py/bin/python3") == 1
    assert time.monotonic() - t0 < 10
    assert message in capsys.readouterr().err
    assert not (guest / PROGRAM).exists()


def test_the_default_interpreter_is_the_one_running_install(guest: Path) -> None:
    me = os.path.abspath(sys.executable)
    place(guest, me, os.path.realpath(sys.executable))
    out: list[str] = []
    assert run_main(["install"], guest, Launchctl(), out, python=None) == 0
    assert (guest / PROGRAM).read_text().startswith(f"#!{me}\n")
    data = plistlib.loads((guest / PLIST).read_bytes())
    assert data["EnvironmentVariables"]["PATH"].split(":")[0] == os.path.dirname(me)
    assert f"checked {me}: it runs non-interactively" in out


def test_a_shebang_cannot_hold_whitespace(guest: Path) -> None:
    script(guest, "/opt/my py/python3", "echo 3.12")
    done = cli("install", "--root", str(guest), "--python", "/opt/my py/python3")
    assert done.returncode == 1 and "a shebang cannot hold whitespace" in done.stderr


# -- uninstall --------------------------------------------------------------------------------------


def test_uninstall_reverses_install(guest: Path) -> None:
    before = tree(guest)
    assert install(guest).returncode == 0
    dry = cli("uninstall", "--root", str(guest), "--dry-run")
    assert dry.stdout.splitlines() == [f"would remove {guest / PLIST}", f"would remove {guest / PROGRAM}",
                                       f"would remove {guest / DROPIN}"]
    assert (guest / PROGRAM).exists()

    done = cli("uninstall", "--root", str(guest))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"removed {guest / PLIST}", f"removed {guest / PROGRAM}",
                                        f"removed {guest / DROPIN}"]
    assert {k for k, v in tree(guest).items() if v is not None} == {k for k, v in before.items() if v is not None}

    again = cli("uninstall", "--root", str(guest))
    assert again.returncode == 0
    assert again.stdout.splitlines() == [f"absent {guest / PLIST}", f"absent {guest / PROGRAM}",
                                         f"absent {guest / DROPIN}"]


def test_uninstall_unload_boots_it_out_first(guest: Path) -> None:
    installed: list[str] = []
    assert run_main(["install"], guest, Launchctl(), installed) == 0
    assert installed[-1] == "not loaded yet: it starts at the next boot, or now with --load"
    launchctl = Launchctl((3, "Boot-out failed: 3: No such process"))
    out: list[str] = []
    assert run_main(["uninstall", "--unload"], guest, launchctl, out) == 0
    assert launchctl.calls == [["launchctl", "bootout", "system/dev.shoes-vz.runner-agent"]]
    assert out[0] == "ran launchctl bootout system/dev.shoes-vz.runner-agent (it was not loaded)"
    assert not (guest / PLIST).exists() and not (guest / PROGRAM).exists()


# -- the CLI entry points ---------------------------------------------------------------------------


def test_shoes_vz_runner_agent_install_passes_through(guest: Path) -> None:
    shoes_vz = Path(sys.executable).with_name("shoes-vz")
    helped = subprocess.run([str(shoes_vz), "runner-agent", "install", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "usage: shoes-vz-runner-agent install" in helped.stdout, helped.stderr
    done = subprocess.run([str(shoes_vz), "runner-agent", "install", "--root", str(guest), "--python", GUEST_PYTHON],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (guest / PLIST).is_file()
