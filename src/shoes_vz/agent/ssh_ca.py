"""`UserCA`: the agent's SSH user CA, and the per-runner credential it issues (docs/security.md §9).

One ed25519 CA per agent, made once in its state directory (0600, the directory 0700). Each runner
gets a fresh client key and a short-lived OpenSSH user certificate: key id and principal = the
runner's id, valid for minutes, usable only from the address the agent connects from, with no pty,
forwarding or rc. A guest's sshd trusts the CA (`TrustedUserCAKeys`) for its own runner's id alone
(`AuthorizedPrincipalsFile`), both written by its runner-agent when the host says hello over the
runner channel. So a credential leaked from one runner opens no other runner, and expires.

The principal is the runner's id, not the template's SSH user: every runner of a template logs in
as that user, so a certificate for it would open every guest that trusts the CA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from shoes_vz.core.errors import ConfigError

log = logging.getLogger(__name__)
FILE_NAME = "ssh-user-ca"
CLOCK_SKEW = 30.0  # seconds a certificate is valid before it was made (guest clocks lag a little)


@dataclass(frozen=True)
class RunnerCredential:
    """A runner's SSH client key and its certificate (asyncssh takes the pair as one client key)."""

    key: asyncssh.SSHKey
    cert: asyncssh.SSHCertificate

    @property
    def client_key(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        return (self.key, self.cert)


class UserCA:
    def __init__(self, key: asyncssh.SSHKey, path: Path) -> None:
        self.key = key
        self.path = path

    @classmethod
    def load_or_create(cls, state_dir: Path) -> UserCA:
        """The agent's CA in `state_dir`, made (0600) on first use; a CA file others may read is
        tightened, one others own is refused."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = state_dir / FILE_NAME
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return cls._create(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{path}: the agent's SSH user CA must be a regular file owned by uid {os.geteuid()}; "
                              "remove it to make a new one (running runners then need their VMs restarted)")
        if st.st_mode & 0o077:
            log.warning("%s was mode %04o: tightened to 0600 (it signs every runner's SSH login)", path,
                        stat.S_IMODE(st.st_mode))
            os.chmod(path, 0o600)
        try:
            return cls(asyncssh.read_private_key(str(path)), path)
        except (asyncssh.KeyImportError, OSError) as e:
            raise ConfigError(f"{path}: unreadable SSH user CA ({e}); remove it to make a new one") from None

    @classmethod
    def _create(cls, path: Path) -> UserCA:
        key = asyncssh.generate_private_key("ssh-ed25519", comment="shoes-vz agent user CA")
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.info("made the agent's SSH user CA %s", path)
        return cls(key, path)

    @property
    def public_line(self) -> str:
        """The CA's public key, one OpenSSH line: what a guest's sshd is told to trust."""
        return self.key.export_public_key().decode().strip()

    @classmethod
    def load(cls, state_dir: Path) -> UserCA:
        """The agent's existing CA (for `shoes-vz ssh` beside it); never makes one."""
        path = state_dir / FILE_NAME
        try:
            return cls(asyncssh.read_private_key(str(path)), path)
        except FileNotFoundError:
            raise ConfigError(f"no SSH user CA in {state_dir}: has an agent run with this state_dir?") from None
        except PermissionError:
            raise ConfigError(f"{path}: not readable by uid {os.geteuid()}: run this as the agent's user") from None
        except (asyncssh.KeyImportError, OSError) as e:
            raise ConfigError(f"{path}: unreadable SSH user CA ({e})") from None

    def issue(self, runner_id: str, ttl: float, source: str | None = None, *, pty: bool = False) -> RunnerCredential:
        """A fresh client key and a certificate for `runner_id` alone, valid `ttl` seconds from now and,
        given `source`, only from that address (`pty`: an operator's interactive shell)."""
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"shoes-vz runner {runner_id}")
        now = time.time()
        cert = self.key.generate_user_certificate(
            key, runner_id, principals=[runner_id], valid_after=int(now - CLOCK_SKEW), valid_before=int(now + ttl),
            source_address=[f"{source}/32"] if source else None, permit_x11_forwarding=False,
            permit_agent_forwarding=False, permit_port_forwarding=False, permit_pty=pty, permit_user_rc=False,
            comment=f"shoes-vz runner {runner_id}",
        )
        return RunnerCredential(key, cert)


def source_address_toward(ip: str) -> str | None:
    """The address this host's connections to `ip` leave from (the kernel's route choice; a UDP
    connect sends nothing), or None when there is no route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 22))
            return str(s.getsockname()[0])
    except OSError:
        return None


__all__ = ["RunnerCredential", "UserCA", "source_address_toward"]
