"""`Bundle`: a runner's directory — its paths, its lock and its metadata.

Nothing else joins bundle paths. Liveness comes from the fcntl lock the `vm run` process holds on
`vm.lock` for its whole life (as tart's PIDLock on config.json).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoes_vz.core.errors import BundleError

SUFFIX = ".bundle"
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107  # sun_path size minus the NUL


def write_json_atomic(path: Path, data: Any, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write JSON to a temp file in the same directory, fsync (if `durable`), rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class VMFiles:
    """The files every macOS VM directory has — a template, a warm slot, a runner bundle (DESIGN §5)."""

    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "Disk.img"

    @property
    def aux_storage(self) -> Path:
        return self.path / "AuxiliaryStorage"

    @property
    def hardware_model(self) -> Path:
        return self.path / "HardwareModel.json"


@dataclass(frozen=True)
class Bundle(VMFiles):
    path: Path

    @classmethod
    def for_runner(cls, runners_dir: Path, runner_id: str) -> Bundle:
        return cls(runners_dir / f"{runner_id}{SUFFIX}")

    @classmethod
    def temporary_for(cls, runners_dir: Path, runner_id: str) -> Bundle:
        """Where a bundle is built before the rename that makes it complete."""
        return cls(runners_dir / f".{runner_id}{SUFFIX}.tmp")

    @staticmethod
    def all_in(runners_dir: Path) -> list[Bundle]:
        if not runners_dir.is_dir():
            return []
        return sorted(Bundle(p) for p in runners_dir.iterdir() if p.name.endswith(SUFFIX))

    @staticmethod
    def live_in(runners_dir: Path) -> Iterator[tuple[Bundle, dict[str, Any] | None]]:
        """Each bundle whose VM process runs, with its RuntimeMetadata (None when unreadable)."""
        for b in Bundle.all_in(runners_dir):
            if not b.is_running():
                continue
            try:
                yield b, b.read_metadata()
            except BundleError:
                yield b, None

    def __lt__(self, other: Bundle) -> bool:
        return str(self.path) < str(other.path)

    @property
    def runner_id(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    # files (DESIGN §5); the disk, aux storage and hardware model come from VMFiles
    @property
    def machine_identifier(self) -> Path:
        return self.path / "MachineIdentifier.json"

    @property
    def runtime_metadata(self) -> Path:
        return self.path / "RuntimeMetadata.json"

    @property
    def saved_state(self) -> Path:
        return self.path / "State.save"

    @property
    def control_socket(self) -> Path:
        """`control.sock` in the bundle, or — when that path is too long for a Unix socket address
        (sun_path: 104 bytes on macOS, 108 on Linux) — a short one derived from the bundle's path in
        a private directory, so a deep runners directory still works. Both ends compute the same."""
        path = self.path / "control.sock"
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
            return path
        digest = hashlib.sha256(os.fsencode(self.path)).hexdigest()[:24]
        return Path(tempfile.gettempdir()) / f"shoes-vz-{os.getuid()}" / f"{digest}.sock"

    @property
    def lock_file(self) -> Path:
        return self.path / "vm.lock"

    @property
    def log_file(self) -> Path:
        return self.path / "vm.log"

    @property
    def guest_dir(self) -> Path:
        """Scratch space of a simulated guest (its "disk" as seen from inside)."""
        return self.path / "guest"

    @property
    def vsock_dir(self) -> Path:
        """A sim guest's vsock device: the directory of its runner channel's socket (vm/channel.py),
        seen by that guest alone."""
        return self.guest_dir / "vsock"

    @property
    def guest_state_dir(self) -> Path:
        """A sim guest's runner-agent state (per-boot host key, trusted CA, principals): its /run/shoes-vz."""
        return self.guest_dir / "state"

    # metadata
    def read_metadata(self) -> dict[str, Any]:
        try:
            data = json.loads(self.runtime_metadata.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.runtime_metadata}: unreadable runtime metadata: {e}") from e
        if not isinstance(data, dict):
            raise BundleError(f"{self.runtime_metadata}: not a JSON object")
        return data

    def update_metadata(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into RuntimeMetadata.json atomically; the agent and the vm process both
        write it, so the read-modify-write holds a lock. Not fsynced: a bundle is garbage after a
        host crash anyway."""
        with open(self.path / ".metadata.lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            data = self.read_metadata()
            data.update(fields)
            write_json_atomic(self.runtime_metadata, data, durable=False)
        return data

    # liveness
    @contextlib.contextmanager
    def hold_lock(self) -> Iterator[int]:
        """Hold the exclusive bundle lock for the block's duration; BundleError if already held."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                raise BundleError(f"{self.path} is in use by another vm process") from e
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield fd
        finally:
            os.close(fd)

    def lock_holder(self) -> int | None:
        """The pid of the live `vm run` process holding the lock, or None."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(raw) if raw.isdigit() else -1
            fcntl.lockf(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def is_running(self) -> bool:
        return self.lock_holder() is not None

    def stray_pids(self, exclude: frozenset[int] = frozenset()) -> list[int]:
        """Processes of the bundle's guest: their cwd, command line or environment names a path in it,
        or they run as the bundle's own guest user (`guest_uid` in its metadata).

        A sim guest's processes live there (a loopback guest's sshd config, runner directory and home
        are in it; its login sessions carry SHOESVZ_GUEST_HOME; a loopback guest of a root agent runs
        as a user of its own); once the VM is gone they are garbage, as a real VM's would be. Linux
        only (/proc); elsewhere nothing is found.
        """
        root = os.fsencode(self.path)
        inside = root + b"/"
        found = []
        proc = Path("/proc")
        if not proc.is_dir():
            return []
        try:
            guest_uid = int(self.read_metadata().get("guest_uid") or -1)
        except (BundleError, ValueError, TypeError):
            guest_uid = -1
        for p in proc.iterdir():
            if not p.name.isdigit() or int(p.name) in exclude or int(p.name) == os.getpid():
                continue
            try:
                cwd = os.readlink(os.fsencode(p / "cwd")).removesuffix(b" (deleted)")
                cmdline = (p / "cmdline").read_bytes()
                uid = p.stat().st_uid if guest_uid >= 0 else -2
            except OSError:
                continue
            if (cwd == root or cwd.startswith(inside) or inside in cmdline or uid == guest_uid
                    or _environ_names(p, inside)):
                found.append(int(p.name))
        return found

    def kill_strays(self, exclude: frozenset[int] = frozenset()) -> int:
        """SIGKILL the guest's processes, again until none is left (a shell may fork meanwhile)."""
        import signal

        killed: set[int] = set()
        for _ in range(5):
            pids = [p for p in self.stray_pids(exclude) if _alive(p)]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(pids)
        return len(killed)


def _environ_names(proc: Path, inside: bytes) -> bool:
    try:
        return inside in (proc / "environ").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Not yet a zombie (a killed process stays listed until its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
