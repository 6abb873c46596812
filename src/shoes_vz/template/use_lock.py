"""`UseLock`: a frozen template is in use while any VM made from it lives.

Every VM made from a template — a runner, a warm slot being built, a scratch boot — holds a shared
flock(2) on the template's TemplateMetadata.json from before its first clone until its VM process
exits; `freeze` takes the lock exclusively before it replaces the template. So a template a live VM
uses cannot be replaced, whatever runners directory (or none) `freeze` was told about.

The agent takes the lock, clones, then starts the VM process with the descriptor inherited
(`supervisor.spawn(hold=…)`) and closes its own copy: from then on the lock lives exactly as long
as the VM process, across agent restarts. The descriptor is read-only (templates are 0444, uchg on
macOS); flock needs no write access.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

from shoes_vz.core.errors import TemplateError
from shoes_vz.template.metadata import FILE_NAME


class UseLock:
    """A held shared lock on one template; `fd` is what a VM process inherits."""

    def __init__(self, fd: int, template_dir: Path) -> None:
        self.fd = fd
        self.template_dir = template_dir
        # a lock whose taker was cancelled (asyncio.to_thread drops the result) must not outlive it
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def take(cls, template_dir: Path) -> UseLock:
        """Wait for any `freeze` replacing the template to finish, then hold it (blocking: call off
        the event loop). TemplateError when the template was replaced meanwhile."""
        meta = template_dir / FILE_NAME
        try:
            fd = os.open(meta, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise TemplateError(f"template {template_dir.name}: cannot open {meta}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_ino != os.stat(meta).st_ino:  # a freeze published a new version while we waited
                raise TemplateError(f"template {template_dir.name} was replaced while a VM was being made from "
                                    "it; the agent picks up the new version with its next look")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, template_dir)

    def close(self) -> None:
        self._finalizer()  # closes the descriptor once; later calls do nothing
        self.fd = -1

    def __enter__(self) -> UseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_use(template_dir: Path) -> bool:
    """Whether a live VM holds the template now."""
    with contextlib.suppress(TemplateError):
        with exclusive(template_dir, what="check"):
            return False
    return True


@contextlib.contextmanager
def exclusive(template_dir: Path, *, what: str = "replace") -> Iterator[None]:
    """Hold the template exclusively (no VM uses it, none can start from it) for the block;
    TemplateError at once when a live VM holds it."""
    meta = template_dir / FILE_NAME
    try:
        fd = os.open(meta, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield  # nothing published there: nothing can use it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TemplateError(f"cannot {what} {template_dir}: a live VM uses it") from None
        yield
    finally:
        os.close(fd)


__all__ = ["UseLock", "exclusive", "in_use"]
