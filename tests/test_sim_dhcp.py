"""The namespaced sim's DHCP lease database is bootpd's lease file: dnsmasq's lease script
(`sim_dhcp`) against the format's quirks, and the sim driver's options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoes_vz.core.errors import DriverError
from shoes_vz.vm.drivers import sim_options
from shoes_vz.vm.drivers.sim_dhcp import bootpd_identifier, dnsmasq_client_id, handle
from shoes_vz.vm.drivers.sim_options import SimOptions, resolve_mode
from shoes_vz.vm.leases import Lease, MACAddress, add_lease, newest_lease_for, read_leases

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MAC_A, MAC_B = "02:0a:00:0b:0c:01", "0e:00:00:00:00:02"  # leading zeros: bootpd drops them


def env(expires: datetime, client_id: str = "", **extra: str) -> dict[str, str]:
    e = {"DNSMASQ_LEASE_EXPIRES": str(int(expires.timestamp())), "DNSMASQ_TIME_REMAINING": "600", **extra}
    if client_id:
        e["DNSMASQ_CLIENT_ID"] = client_id
    return e


def test_add_writes_bootpd_format_unpadded_newest_first(tmp_path: Path) -> None:
    f = tmp_path / "dhcpd_leases"
    handle(f, ["add", MAC_A, "198.18.7.2", "sim-a"], env(NOW + timedelta(seconds=600), "01:" + MAC_A), NOW)
    handle(f, ["add", MAC_B, "198.18.7.3"], env(NOW + timedelta(seconds=900), "01:" + MAC_B,
                                                 DNSMASQ_SUPPLIED_HOSTNAME="sim-b"), NOW)
    text = f.read_text()
    assert text == (
        "{\n\tname=sim-b\n\tip_address=198.18.7.3\n\thw_address=1,e:0:0:0:0:2\n\tidentifier=1,e:0:0:0:0:2\n"
        f"\tlease=0x{int((NOW + timedelta(seconds=900)).timestamp()):x}\n}}\n"
        "{\n\tname=sim-a\n\tip_address=198.18.7.2\n\thw_address=1,2:a:0:b:c:1\n\tidentifier=1,2:a:0:b:c:1\n"
        f"\tlease=0x{int((NOW + timedelta(seconds=600)).timestamp()):x}\n}}\n")
    # the agent's reader, which compares MACs as bytes, finds each one by its padded spelling
    lease = newest_lease_for(read_leases(f), MAC_A, NOW)
    assert lease is not None and lease.ip == "198.18.7.2" and lease.expiry == NOW + timedelta(seconds=600)


def test_old_renews_in_place_and_del_removes(tmp_path: Path) -> None:
    f = tmp_path / "dhcpd_leases"
    handle(f, ["add", MAC_A, "198.18.7.2"], env(NOW + timedelta(seconds=600)), NOW)
    handle(f, ["add", MAC_B, "198.18.7.3"], env(NOW + timedelta(seconds=600)), NOW)
    handle(f, ["old", MAC_A, "198.18.7.2"], env(NOW + timedelta(seconds=1200)), NOW)
    leases = read_leases(f)
    assert [le.ip for le in leases] == ["198.18.7.2", "198.18.7.3"]  # renewed: first again, one entry
    assert leases[0].expiry == NOW + timedelta(seconds=1200)
    assert leases[0].identifier == "1,2:a:0:b:c:1"  # no client id given: the MAC, as bootpd writes it
    handle(f, ["del", MAC_A, "198.18.7.2"], {}, NOW)
    assert [str(le.mac) for le in read_leases(f)] == [MAC_B]


def test_init_hands_dnsmasq_the_live_leases_in_its_format(tmp_path: Path) -> None:
    f = tmp_path / "dhcpd_leases"
    duid = "ff,0:1:0:1:2c:3d:4e:5f"
    f.write_text("{\n\tip_address=198.18.7.9\n\thw_address=" + duid + "\n\tidentifier=" + duid +
                 f"\n\tlease=0x{int((NOW + timedelta(hours=1)).timestamp()):x}\n}}\n")  # a DUID: no MAC
    add_lease(f, Lease("198.18.7.4", MACAddress.parse(MAC_B), NOW - timedelta(seconds=1)))  # expired
    add_lease(f, Lease("198.18.7.2", MACAddress.parse(MAC_A), NOW + timedelta(seconds=60), "sim-a",
                       "1,2:a:0:b:c:1"))
    lines = handle(f, ["init"], {}, NOW)
    assert lines == [f"{int((NOW + timedelta(seconds=60)).timestamp())} {MAC_A} 198.18.7.2 sim-a 01:{MAC_A}"]


def test_other_actions_and_hardware_types_are_ignored(tmp_path: Path) -> None:
    f = tmp_path / "dhcpd_leases"
    for argv in (["arp-add", MAC_A, "198.18.7.2"], ["tftp", "10", "198.18.7.2", "/x"],
                 ["add", "06-01:23:45:67:89:ab", "198.18.7.2"], ["future"], []):
        assert handle(f, argv, {}, NOW) == []
    assert not f.exists()


def test_client_identifiers_convert_both_ways() -> None:
    assert bootpd_identifier("01:02:00:0a:0b:0c:0d") == "1,2:0:a:b:c:d"
    assert bootpd_identifier("ff:00:01:ab") == "ff,0:1:ab"
    assert bootpd_identifier("") is None and bootpd_identifier("zz:01") is None
    assert dnsmasq_client_id("1,2:0:a:b:c:d") == "01:02:00:0a:0b:0c:0d"
    assert dnsmasq_client_id(None) == "*" and dnsmasq_client_id("garbage") == "*"


def test_lease_length_without_an_absolute_expiry(tmp_path: Path) -> None:
    f = tmp_path / "dhcpd_leases"
    handle(f, ["add", MAC_A, "198.18.7.2"], {"DNSMASQ_LEASE_LENGTH": "300"}, NOW)
    assert read_leases(f)[0].expiry == NOW + timedelta(seconds=300)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"mode": "vm"}, "mode: one of auto, namespaced, loopback"),
    ({"subnet": "8.8.8.0/24"}, "subnet: a private range"),
    ({"subnet": "10.0.0.0/30"}, "at least a /29"),
    ({"subnet": "not a net"}, "subnet:"),
    ({"pool_size": 0}, "pool_size"),
    ({"lease_seconds": 60}, "dnsmasq's minimum"),
    ({"dhcp_release": "yes"}, "dhcp_release: true or false"),
    ({"network_linger": -1}, "network_linger"),
    ({"poolsize": 3}, "unknown sim driver option(s) poolsize"),
])
def test_bad_options_are_refused_with_the_reason(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(DriverError) as e:
        SimOptions.parse(raw)
    assert needle in str(e.value)


def test_options_parse_into_their_types() -> None:
    o = SimOptions.parse({"subnet": "10.77.0.0/24", "pool_size": 2, "lease_seconds": 120, "mode": "loopback"})
    assert str(o.subnet) == "10.77.0.0/24" and o.pool_size == 2 and o.mode == "loopback"
    assert SimOptions.parse(None) == SimOptions()


def test_the_loopback_mode_says_it_is_less_faithful(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_options, "namespaced_missing", lambda: ["root"])
    mode, why = resolve_mode(SimOptions())
    assert mode == "loopback" and "LOOPBACK MODE, less faithful" in why and "need root" in why
    with pytest.raises(DriverError, match="the namespaced sim cannot run here: missing root"):
        resolve_mode(SimOptions(mode="namespaced"))
    monkeypatch.setattr(sim_options, "namespaced_missing", list)
    assert resolve_mode(SimOptions())[0] == "namespaced"
    assert resolve_mode(SimOptions(mode="loopback"))[0] == "loopback"


def test_vm_run_describe_says_which_mode_runs_here() -> None:
    import subprocess
    import sys

    from shoes_vz.vm.drivers.sim_options import namespaced_missing

    def describe(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoes_vz.vm.process", "--describe", *extra],
                              capture_output=True, text=True, timeout=30)

    done = describe()
    assert done.returncode == 0
    expected = "LOOPBACK MODE, less faithful" if namespaced_missing() else "namespaced guest"
    assert done.stdout.startswith("sim: ") and expected in done.stdout
    forced = describe("--driver-options", '{"mode": "loopback"}')
    assert "loopback mode chosen" in forced.stdout
    bad = describe("--driver-options", '{"subnet": "8.8.8.0/24"}')
    assert bad.returncode == 11 and "subnet: a private range" in bad.stderr
