"""A template's secrets and immutability against a local non-root user and against a loopback sim
guest (docs/security.md §11): private keys and the disk image are the agent's user's alone, and no
guest can write into the template it was cloned from."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from simvm import SimVM
from stack_fixtures import have_sshd, require

from shoes_vz.template import init_sim
from shoes_vz.template.modes import is_private


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone: that would prove nothing)."""
    root = Path(tempfile.mkdtemp(prefix="shoes-vz-sec-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
    shutil.rmtree(root, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    require(os.geteuid() == 0, "root (to run a check as the user nobody)")
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def test_template_private_keys_and_disk_are_unreadable_by_a_local_user(open_root: Path) -> None:
    t = init_sim(open_root / "templates", "sec")
    private = [p for p in t.path.rglob("*") if p.is_file() and is_private(p.name)]
    assert {p.name for p in private} >= {"Disk.img", "ssh_host_ed25519_key"}, private
    for p in private:
        st = p.stat()
        assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == os.geteuid(), (p, oct(st.st_mode))
        done = as_nobody("cat", str(p))
        assert done.returncode != 0 and "Permission denied" in done.stderr, (p, done)
    # the control: the template's public files are readable by the same user, so the path is open
    meta = as_nobody("cat", str(t.path / "TemplateMetadata.json"))
    assert meta.returncode == 0 and "ssh_host_key" in meta.stdout, meta.stderr
    for p in (t.path, t.path / "sim", t.path / "sim" / "ssh_host_ed25519_key", t.disk):
        assert as_nobody("touch", str(p)).returncode != 0


def test_a_loopback_guest_reads_no_template_key_and_writes_no_template(open_root: Path) -> None:
    """As root the loopback guest is a dedicated unprivileged user (never root, never the agent)."""
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    require(os.geteuid() == 0, "root (the loopback guest's own user)")
    t = init_sim(open_root / "templates", "loop")
    vm = SimVM(t, open_root / "runners", open_root / "dhcpd_leases", "loop-guest",
               driver_options={"mode": "loopback"}).start()
    try:
        key = t.path / "sim" / "ssh_host_ed25519_key"
        rc, out = vm.run(f"id -u; cat {key}; touch {t.path}/owned; touch {t.disk}; "
                         f"echo x >> {t.path}/TemplateMetadata.json; echo done")
        assert "done" in out, out
        uid = int(out.split()[0])
        assert uid not in (0, os.geteuid()), "the loopback guest runs as root"
        assert "-----BEGIN" not in out and out.count("Permission denied") >= 3, out
        assert not (t.path / "owned").exists()
    finally:
        vm.kill()
