"""`RunnerChannel`: the agent learns who runner X is from X's VM alone (docs/security.md §8).

The agent says hello over the runner channel — a stream bound to X's VM object that only X's `vm run`
can open (vsock on a Mac, a per-VM Unix socket in the sim; `vm/channel.py`) — through X's control
socket: X's id, a nonce, the agent's SSH user CA, the host's time and, after a warm restore, "re-announce".
The guest answers with its addresses, its per-boot /exec token and a per-boot SSH host key. The answer
counts only when it echoes this hello's runner id and nonce, and its address is then checked against
what the host itself knows: the newest unexpired lease for X's MAC must name it (where there is one),
no lease may give it to another MAC, and no other live runner of this agent may hold it.

The IP notify is a hint (`hint`): it makes the next hello go at once, and never decides anything.

A restored VM (a warm slot) that does not answer within `restore_timeout` is told to boot cold with a
fresh identity (DESIGN §12); the hellos then start again with a new nonce.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from shoes_vz.core.errors import RunnerFailed
from shoes_vz.vm import control
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.leases import Lease, MACAddress, newest_lease_for, read_leases

log = logging.getLogger(__name__)
VERSION = 1
EXCHANGE_TIMEOUT = 5.0   # one hello: vm run connects, the guest answers
RETRY_INTERVAL = 0.025   # while the guest boots; a notify or a new lease makes the next try go at once
LEASE_SETTLE = 3.0       # seconds an answer may disagree with the leases before it is refused
MAX_ADDRESSES = 32
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


class ChannelRefused(RunnerFailed):
    """The VM's answer cannot be trusted: the runner fails (never repaired)."""


class _NotYet(Exception):
    """The answer is fine but not enough yet (no address on the runner's MAC: DHCP still running)."""


@dataclass(frozen=True)
class Identity:
    """What runner X's VM said over its channel, checked: the address, token and host key to use."""

    ip: str
    token: str
    host_key: asyncssh.SSHKey
    clock: dict[str, Any]
    reannounced: bool  # the answer to a re-announce after a restore
    boot_id: str


class RunnerChannel:
    def __init__(self, bundle: Bundle, runner_id: str, mac: MACAddress, lease_file: Path, user_ca: str,
                 others: Callable[[], dict[str, str]], restore_timeout: float) -> None:
        """`others`: the addresses other live runners of this agent hold, by runner id."""
        self.bundle, self.runner_id, self.mac, self.lease_file = bundle, runner_id, mac, lease_file
        self.user_ca, self.others, self.restore_timeout = user_ca, others, restore_timeout
        self._hinted = asyncio.Event()

    def hint(self) -> None:
        """A notify for this runner (or a new lease): say hello now rather than at the next interval."""
        self._hinted.set()

    async def identify(self, timeout: float, setting: str = "boot_to_ip_timeout") -> Identity:
        """Say hello until the VM answers in a way we can trust, or `timeout` passes (RunnerFailed,
        naming `setting`); a refused answer fails at once (ChannelRefused)."""
        deadline = time.monotonic() + timeout
        nonce = secrets.token_hex(16)
        restored_since: float | None = None
        disagreeing_since: float | None = None
        last = "the VM did not answer yet"
        while True:
            now = time.monotonic()
            meta = await asyncio.to_thread(self.bundle.read_metadata)
            restored = meta.get("restored") is True
            if restored and restored_since is None:
                restored_since = now
            if restored and restored_since is not None and now - restored_since > self.restore_timeout:
                await self._cold_boot(f"the restored guest did not re-announce within {self.restore_timeout:g}s "
                                      f"(restore_announce_timeout; last: {last})")
                nonce, restored_since, deadline = secrets.token_hex(16), None, max(deadline, now + timeout)
                continue
            if now > deadline:
                raise RunnerFailed(f"no IP address within {setting} ({timeout:g}s): no trusted answer on the runner "
                                   f"channel (last: {last})")
            try:
                answer = await self._exchange(self._hello(nonce, restored))
                identity = self._check(answer, nonce, restored, await asyncio.to_thread(read_leases, self.lease_file))
                log.info("runner %s: its channel says %s (host key %s; clock %s)", self.runner_id, identity.ip,
                         identity.host_key.get_fingerprint(), identity.clock.get("how", "?"))
                return identity
            except _Unanswered as e:
                last = str(e)
            except _NotYet as e:
                last = str(e)
            except _Disagrees as e:
                last = str(e)
                disagreeing_since = disagreeing_since or now
                if now - disagreeing_since > LEASE_SETTLE:
                    raise ChannelRefused(f"not trusting the runner channel's answer: {e}") from None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hinted.wait(), RETRY_INTERVAL)
            self._hinted.clear()

    def _hello(self, nonce: str, reannounce: bool) -> str:
        return json.dumps({"shoes_vz": "hello", "version": VERSION, "runner_id": self.runner_id, "nonce": nonce,
                           "user_ca": self.user_ca, "time": time.time(), "reannounce": reannounce})

    async def _exchange(self, line: str) -> Any:
        try:
            reply = await control.request(self.bundle.control_socket, "channel", timeout=EXCHANGE_TIMEOUT + 2,
                                          line=line, io_timeout=EXCHANGE_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise _Unanswered(f"the VM process did not answer ({type(e).__name__}: {e})") from None
        if not reply.get("ok"):
            raise _Unanswered(str(reply.get("error", "no answer")))
        try:
            return json.loads(str(reply.get("answer", "")))
        except (ValueError, RecursionError) as e:
            raise ChannelRefused(f"the runner channel's answer is not JSON: {e}") from None

    def _check(self, answer: Any, nonce: str, reannounce: bool, leases: list[Lease]) -> Identity:
        if isinstance(answer, dict) and answer.get("shoes_vz") == "error":
            raise ChannelRefused(f"the guest refused the hello: {str(answer.get('error', ''))[:300]}")
        if not isinstance(answer, dict) or answer.get("shoes_vz") != "welcome" or answer.get("version") != VERSION:
            raise ChannelRefused("the runner channel's answer is no welcome of version 1")
        if answer.get("runner_id") != self.runner_id or answer.get("nonce") != nonce:
            raise ChannelRefused(f"the runner channel answered another hello (runner {answer.get('runner_id')!r}, "
                                 "not this hello's nonce)")
        token, key_line = answer.get("token"), answer.get("host_key")
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise ChannelRefused("the runner channel's answer carries no usable /exec token")
        try:
            host_key = asyncssh.import_public_key(str(key_line))
        except (asyncssh.KeyImportError, ValueError) as e:
            raise ChannelRefused(f"the runner channel's answer carries no SSH host key ({e})") from None
        ip = self._address(answer.get("addresses"), leases)
        clock = answer.get("clock")
        return Identity(ip, token, host_key, clock if isinstance(clock, dict) else {}, reannounce,
                        str(answer.get("boot_id", ""))[:64])

    def _address(self, raw: Any, leases: list[Lease]) -> str:
        """The guest's address on the runner's MAC, agreeing with every lease and live runner we know."""
        if not isinstance(raw, list) or len(raw) > MAX_ADDRESSES:
            raise ChannelRefused("the runner channel's answer has no address list")
        mine: list[str] = []
        for a in raw:
            if not isinstance(a, dict):
                continue
            ip, mac = a.get("ip"), a.get("mac")
            try:
                addr = ipaddress.IPv4Address(str(ip))
                on_mac = not mac or MACAddress.parse(str(mac)) == self.mac
            except ValueError:
                continue
            if on_mac and not (addr.is_unspecified or addr.is_multicast or addr.is_link_local or
                               addr == ipaddress.IPv4Address("255.255.255.255")):
                mine.append(str(addr))
        if not mine:
            raise _NotYet(f"the guest has no IPv4 address on {self.mac} yet")
        lease = newest_lease_for(leases, self.mac)
        if lease is not None and lease.ip not in mine:
            raise _Disagrees(f"it says {', '.join(mine)} but the host's lease for {self.mac} is {lease.ip}")
        ip = lease.ip if lease is not None else mine[0]
        holder = _lease_holding(leases, ip)
        if holder is not None and holder.mac != self.mac:
            raise _Disagrees(f"it says {ip}, which the host's DHCP server leased to {holder.mac or 'another client'}")
        taken = {rid: other for rid, other in self.others().items() if other == ip and rid != self.runner_id}
        if taken:
            raise _Disagrees(f"it says {ip}, which runner {next(iter(taken))} holds")
        return ip

    async def _cold_boot(self, reason: str) -> None:
        log.warning("runner %s: %s; asking its VM to boot cold with a fresh identity", self.runner_id, reason)
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            reply = await control.request(self.bundle.control_socket, "cold-boot", timeout=30.0, reason=reason)
            if not reply.get("ok"):
                log.warning("runner %s: cold boot refused: %s", self.runner_id, reply.get("error"))


class _Unanswered(Exception):
    """No answer this time (the guest is booting, or its VM process is busy): ask again."""


class _Disagrees(Exception):
    """The answer disagrees with the leases or another runner; refused if it keeps disagreeing."""


def _lease_holding(leases: list[Lease], ip: str) -> Lease | None:
    now = datetime.now(UTC)
    live = [le for le in leases if le.ip == ip and not le.expired(now)]
    return max(live, key=lambda le: le.expiry) if live else None


__all__ = ["ChannelRefused", "Identity", "RunnerChannel"]
