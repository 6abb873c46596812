"""Every check the agent makes of a runner channel's answer (agent/runner_channel.py), against a real
control socket whose `vm run` side answers as a hostile or confused guest would. Each answer that
must not be trusted is refused; the well-formed one gives the address the host's lease names."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from shoes_vz.agent import runner_channel
from shoes_vz.agent.runner_channel import ChannelRefused, RunnerChannel
from shoes_vz.core.errors import RunnerFailed
from shoes_vz.vm.bundle import Bundle
from shoes_vz.vm.control import ControlServer
from shoes_vz.vm.leases import Lease, MACAddress, add_lease

MAC = MACAddress.parse("02:00:00:00:00:0b")
OTHER = MACAddress.parse("02:00:00:00:00:0a")
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
Answer = Callable[[dict[str, Any]], Any]


def welcome(hello: dict[str, Any], **over: Any) -> dict[str, Any]:
    answer = {"shoes_vz": "welcome", "version": 1, "runner_id": hello["runner_id"], "nonce": hello["nonce"],
              "addresses": [{"ip": "10.0.0.2", "mac": str(MAC)}], "token": secrets.token_urlsafe(24),
              "host_key": HOST_KEY, "clock": {"how": "model"}, "boot_id": "b1"}
    answer.update(over)
    return answer


class FakeVM:
    """`vm run`'s side of the control socket: `channel` answered by `answer`, `cold-boot` recorded."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle, self.answer = bundle, welcome
        self.hellos: list[dict[str, Any]] = []
        self.cold_boots: list[str] = []
        self.server = ControlServer(bundle.control_socket, self.handle)

    def handle(self, command: str, req: dict[str, Any]) -> dict[str, Any]:
        if command == "cold-boot":
            self.cold_boots.append(str(req.get("reason")))
            self.bundle.update_metadata(restored=False)
            return {}
        if command != "channel":
            return {}
        hello = json.loads(req["line"])
        self.hellos.append(hello)
        out = self.answer(hello)
        if isinstance(out, Exception):
            raise out
        return {"answer": out if isinstance(out, str) else json.dumps(out)}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[FakeVM]:
    bundle = Bundle.for_runner(tmp_path / "runners", "runner-b")
    bundle.path.mkdir(parents=True)
    bundle.update_metadata(mac_address=str(MAC))
    fake = FakeVM(bundle)
    fake.server.start()
    yield fake
    fake.server.close()


def lease(path: Path, ip: str, mac: MACAddress) -> None:
    add_lease(path, Lease(ip, mac, datetime.now(UTC) + timedelta(minutes=10)))


def channel(vm: FakeVM, tmp_path: Path, others: dict[str, str] | None = None,
            restore_timeout: float = 30.0) -> RunnerChannel:
    return RunnerChannel(vm.bundle, "runner-b", MAC, tmp_path / "dhcpd_leases", "ssh-ed25519 AAAA ca",
                         lambda: dict(others or {}), restore_timeout)


async def test_a_good_answer_gives_the_leased_address_token_and_host_key(vm: FakeVM, tmp_path: Path) -> None:
    lease(tmp_path / "dhcpd_leases", "10.0.0.2", MAC)
    ident = await channel(vm, tmp_path).identify(5)
    assert ident.ip == "10.0.0.2" and ident.host_key.export_public_key().decode().strip() == HOST_KEY
    hello = vm.hellos[-1]
    assert hello["runner_id"] == "runner-b" and len(hello["nonce"]) == 32 and hello["user_ca"].startswith("ssh-")
    assert abs(hello["time"] - time.time()) < 5 and hello["reannounce"] is False


@pytest.mark.parametrize("answer, match", [
    (lambda h: welcome(h, nonce="0" * 32), "another hello"),                    # a replayed answer
    (lambda h: welcome(h, runner_id="runner-a"), "another hello"),              # another runner's VM
    (lambda h: welcome(h, token="short"), "no usable /exec token"),
    (lambda h: welcome(h, token=None), "no usable /exec token"),
    (lambda h: welcome(h, host_key="ssh-ed25519 garbage"), "no SSH host key"),
    (lambda h: welcome(h, version=2), "no welcome of version 1"),
    (lambda h: {"shoes_vz": "error", "error": "bad hello"}, "refused the hello"),
    (lambda h: "[" * 10000, "not JSON"),  # deep nesting, within the channel's 16 KiB line
    (lambda h: welcome(h, addresses="10.0.0.2"), "no address list"),
    (lambda h: welcome(h, addresses=[{"ip": f"10.0.1.{i}"} for i in range(40)]), "no address list"),
])
async def test_an_answer_that_cannot_be_trusted_is_refused(vm: FakeVM, tmp_path: Path, answer: Answer,
                                                           match: str) -> None:
    vm.answer = answer
    with pytest.raises(ChannelRefused, match=match):
        await channel(vm, tmp_path).identify(5)


@pytest.mark.parametrize("setup, others, match", [
    # the host's own lease for this MAC names another address
    (lambda p: lease(p, "10.0.0.7", MAC), None, "the host's lease for 02:00:00:00:00:0b is 10.0.0.7"),
    # the address it names is leased to another MAC (another guest's)
    (lambda p: lease(p, "10.0.0.2", OTHER), None, "leased to 02:00:00:00:00:0a"),
    # the address is another live runner's
    (lambda p: None, {"runner-a": "10.0.0.2"}, "which runner runner-a holds"),
])
async def test_an_address_the_host_knows_better_is_refused(vm: FakeVM, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           setup: Callable[[Path], None],
                                                           others: dict[str, str] | None, match: str) -> None:
    monkeypatch.setattr(runner_channel, "LEASE_SETTLE", 0.2)
    setup(tmp_path / "dhcpd_leases")
    with pytest.raises(ChannelRefused, match=match):
        await channel(vm, tmp_path, others).identify(5)


async def test_addresses_on_other_interfaces_are_not_the_runners(vm: FakeVM, tmp_path: Path) -> None:
    vm.answer = lambda h: welcome(h, addresses=[{"ip": "10.0.0.2", "mac": str(OTHER)}, {"ip": "0.0.0.0"},
                                                {"ip": "169.254.1.1"}, {"ip": "224.0.0.1"}])
    with pytest.raises(RunnerFailed, match="no IPv4 address on 02:00:00:00:00:0b yet"):
        await channel(vm, tmp_path).identify(0.5)


async def test_a_guest_that_never_answers_times_out_naming_the_setting(vm: FakeVM, tmp_path: Path) -> None:
    from shoes_vz.vm.channel import ChannelError

    vm.answer = lambda h: ChannelError("the guest's runner-agent does not listen on its channel yet", retry=True)
    t0 = time.monotonic()
    with pytest.raises(RunnerFailed, match="boot_to_ip_timeout"):
        await channel(vm, tmp_path).identify(0.5)
    assert time.monotonic() - t0 < 3 and len(vm.hellos) > 3


async def test_a_restored_guest_is_told_to_reannounce_and_else_boots_cold(vm: FakeVM, tmp_path: Path) -> None:
    """Issue 13 item 2: after a warm restore the hello says `reannounce` and the host's time; a restored
    guest that stays silent past restore_announce_timeout is cold-booted, and the hellos start again
    with a new nonce (the fresh guest answers those)."""
    from shoes_vz.vm.channel import ChannelError

    vm.bundle.update_metadata(restored=True)
    silent = ChannelError("no answer", retry=True)
    vm.answer = lambda h: welcome(h) if not h["reannounce"] else silent
    ident = await channel(vm, tmp_path, restore_timeout=0.3).identify(10)
    assert len(vm.cold_boots) == 1 and "did not re-announce within 0.3s" in vm.cold_boots[0]
    assert ident.reannounced is False
    first, last = vm.hellos[0], vm.hellos[-1]
    assert first["reannounce"] is True and last["reannounce"] is False and first["nonce"] != last["nonce"]
    # a restored guest that does re-announce is kept
    vm.bundle.update_metadata(restored=True)
    vm.answer, vm.cold_boots = welcome, []
    ident = await channel(vm, tmp_path, restore_timeout=5).identify(5)
    assert ident.reannounced is True and vm.cold_boots == []
