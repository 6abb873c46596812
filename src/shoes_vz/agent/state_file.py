"""`runner-state.json`: the host's view of its runners, rewritten atomically on every change."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from shoes_vz.vm.bundle import write_json_atomic

log = logging.getLogger(__name__)


class StateFile:
    """Coalesces bursts of changes: at most one write in flight, the newest snapshot wins."""

    def __init__(self, path: Path, *, durable: bool = False) -> None:
        self.path = path
        self.durable = durable
        self._pending: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._problem = ""

    def update(self, snapshot: dict[str, Any]) -> None:
        self._pending = {**snapshot, "updated_at": time.time()}
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending is not None:
            data, self._pending = self._pending, None
            await asyncio.to_thread(self._write, data)

    def _write(self, data: dict[str, Any]) -> None:
        """A write that fails (a full disk) is logged once and tried again with the next change."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # runner-state.json: atomic but not fsynced (it lives on /var/run, tmpfs, rewritten on every change)
            write_json_atomic(self.path, data, durable=self.durable)
        except OSError as e:
            if str(e) != self._problem:
                log.error("cannot write %s: %s (the next change tries again)", self.path, e)
            self._problem = str(e)
            return
        if self._problem:
            log.info("%s written again", self.path)
        self._problem = ""

    async def drain(self) -> None:
        if self._task is not None:
            await self._task
