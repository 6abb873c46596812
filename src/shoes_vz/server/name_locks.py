"""`NameLocks`: one lock per runner name, kept while anyone holds it or waits for it.

AddInstance decides for a name under its lock (look it up, replace a failed runner, place a new one).
A lock dropped as soon as it is not held — while a woken waiter has not taken it yet — lets a third
caller make a new one and decide beside that waiter: two runners for one name. The count of users
(holder and waiters) decides when a name's lock goes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class NameLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name) or (asyncio.Lock(), 0)
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users <= 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


__all__ = ["NameLocks"]
