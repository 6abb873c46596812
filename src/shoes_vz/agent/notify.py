"""The IP-notify HTTP server guests POST to (DESIGN §3.4, §6).

A notification is matched to a runner by the request's **source address** and the runner's
**MAC**, cross-checked against the newest unexpired DHCP lease for that MAC — never first come,
first served. Upstream's body `{runner_id, ip_address}` (no MAC) is matched by source address
against the leases of our live runners. Anything else is refused with 403 and logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web

from shoes_vz.agent.runner import Runner
from shoes_vz.vm.leases import MACAddress, newest_lease_for, read_leases

log = logging.getLogger(__name__)
MAX_BODY = 4096


class NotifyApp:
    def __init__(self, runners: Callable[[], Iterable[Runner]], lease_file: Path) -> None:
        self.runners = runners
        self.lease_file = lease_file
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post("/notify-ip", self.notify)

    def _refuse(self, source: str, why: str) -> web.Response:
        log.warning("notify from %s refused: %s", source, why)
        return web.json_response({"error": why}, status=403)

    async def notify(self, request: web.Request) -> web.Response:
        source = request.remote or ""
        try:
            body = json.loads(await request.read())
            claimed = str(body["ip_address"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with ip_address"}, status=400)
        if claimed != source:
            return self._refuse(source, f"claims {claimed} but comes from {source}")
        live = [r for r in self.runners() if r.live]
        leases = await asyncio.to_thread(read_leases, self.lease_file)
        raw_mac = body.get("mac_address")
        if raw_mac:
            try:
                mac = MACAddress.parse(str(raw_mac))
            except ValueError:
                return self._refuse(source, f"bad mac_address {raw_mac!r}")
            runner = next((r for r in live if r.mac == mac), None)
            if runner is None:
                return self._refuse(source, f"no live runner has MAC {mac}")
            lease = newest_lease_for(leases, mac)
            if lease is not None and lease.ip != source:
                return self._refuse(source, f"the lease for {mac} is {lease.ip}, not {source}")
        else:
            matches = [r for r in live if (le := newest_lease_for(leases, r.mac)) and le.ip == source]
            if len(matches) != 1:
                return self._refuse(source, "no MAC given and no single live runner holds this lease")
            runner = matches[0]
        runner.notified(source, str(body.get("token", "")))
        runner.log.info("notify: runner %s is at %s", runner.runner_id, source)
        return web.json_response({"runner_id": runner.runner_id})
