"""`MacPool`: the MAC addresses this host's cold runners take, recycled (DESIGN §6).

bootpd hands each MAC a lease (86,400 s by default) from a pool of about 253 addresses and reclaims
expired leases only when the pool is spent; the runner's guest does not give its lease back. A fresh
MAC per runner so spends a Mac's NAT pool within a day of runners. Recycled MACs keep the host's
lease count at the number of MACs: a MAC that comes back finds its own lease (bootpd's bindings are
sticky), so it gets its address again and the pool sees no new client.

Rules:
- a MAC is held by one runner at a time, and is reused only once the VM that had it is gone (the
  runner is GONE and its VM process has exited — `release`); never two live VMs with one MAC;
- the most recently released MAC goes first, so sequential runners cycle through as few as
  concurrency needs (about `max_runners`, plus runners still tearing down);
- warm slots keep their own MACs (their saved state belongs to them): never in this pool;
- `<state_dir>/mac-pool.json` keeps the pool across restarts (written off the loop, atomically); the
  agent reconciles it with the runners it adopts, so a lost write loses no MAC and frees none early.

Editing bootpd's `/var/db/dhcpd_leases` to release a lease needs root, and bootpd keeps its own
bindings in memory (it re-reads them on SIGHUP, also root): the agent runs as a normal user, so it
recycles MACs instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from shoes_vz.agent.state_file import StateFile
from shoes_vz.vm.identity import new_mac
from shoes_vz.vm.leases import MACAddress

log = logging.getLogger(__name__)
FILE_NAME = "mac-pool.json"
FORMAT = "shoes-vz-mac-pool/1"


@dataclass
class PooledMAC:
    mac: str
    runner_id: str = ""        # the runner holding it; "" when free
    released_at: float = 0.0   # when its last VM was gone
    quarantined: bool = False  # its VM did not stop: never handed out again (until the agent restarts)


class MacPool:
    def __init__(self, state_dir: Path, *, recycle: bool = True) -> None:
        self.path = state_dir / FILE_NAME
        self.recycle = recycle
        self._entries: dict[str, PooledMAC] = {}
        self._file = StateFile(self.path, durable=True)

    # -- persistence ------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the pool (blocking: at start). An unreadable file starts an empty pool, said once."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"not {FORMAT}")
            entries = [PooledMAC(**e) for e in data["macs"]]
            for e in entries:
                MACAddress.parse(e.mac)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("MAC pool %s unreadable (%s): starting a new one", self.path, e)
            return
        self._entries = {e.mac: e for e in entries}

    def reconcile(self, live: Mapping[str, MACAddress]) -> None:
        """After adoption: entries held by runners that are not live are free again (their VMs are gone:
        a live VM's runner is adopted); live cold runners' MACs are held, pooled if they were not."""
        for e in self._entries.values():
            e.quarantined = False
            if e.runner_id and e.runner_id not in live:
                e.runner_id, e.released_at = "", time.time()
        if self.recycle:
            for runner_id, mac in live.items():
                entry = self._entries.setdefault(str(mac), PooledMAC(str(mac)))
                entry.runner_id = runner_id
        self._save()

    async def drain(self) -> None:
        await self._file.drain()

    def _save(self) -> None:
        self._file.update({"format": FORMAT, "macs": [asdict(e) for e in self._entries.values()]})

    # -- use --------------------------------------------------------------------------------------
    def acquire(self, runner_id: str, avoid: Collection[MACAddress]) -> MACAddress:
        """A MAC for a cold runner: the most recently freed one no live VM uses, else a new one."""
        if not self.recycle:
            return new_mac(set(avoid) | self.macs())
        taken = {str(m) for m in avoid}
        free = [e for e in self._entries.values() if not e.runner_id and not e.quarantined and e.mac not in taken]
        if free:
            entry = max(free, key=lambda e: e.released_at)
        else:
            mac = new_mac(set(avoid) | self.macs())
            entry = self._entries.setdefault(str(mac), PooledMAC(str(mac)))
            log.info("MAC pool: %s added (%d MACs now)", mac, len(self._entries))
        entry.runner_id = runner_id
        self._save()
        return MACAddress.parse(entry.mac)

    def release(self, runner_id: str, *, vm_gone: bool) -> None:
        """The runner is gone. Its MAC is free for the next runner only when its VM process has exited."""
        for e in self._entries.values():
            if e.runner_id == runner_id:
                e.runner_id = ""
                e.released_at = time.time()
                if not vm_gone:
                    e.quarantined = True
                    log.error("MAC %s of runner %s stays out of use: its VM process did not stop", e.mac, runner_id)
                self._save()

    def macs(self) -> set[MACAddress]:
        return {MACAddress.parse(m) for m in self._entries}

    def held(self) -> dict[str, str]:
        """runner id → MAC, for the runners holding one."""
        return {e.runner_id: e.mac for e in self._entries.values() if e.runner_id}

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["MacPool", "PooledMAC"]
