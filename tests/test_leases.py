"""The /var/db/dhcpd_leases format: parser, MAC matching, writer (DESIGN §6, reference §7.2)."""

from __future__ import annotations

import dataclasses
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoes_vz.vm.leases import (
    Lease,
    MACAddress,
    add_lease,
    format_leases,
    newest_lease_for,
    parse_leases,
    read_leases,
    remove_leases_for,
)

NOW = datetime(2023, 11, 28, 12, 0, tzinfo=UTC)

# Tart's LeaseTest sample: lease=0x6565da9e is 2023-11-28T12:18:38Z.
SAMPLE = """{
\tname=debian
\tip_address=192.168.64.2
\thw_address=1,a:1b:3:4c:5d:6e
\tidentifier=1,a:1b:3:4c:5d:6e
\tlease=0x6565da9e
}
"""


def block(ip: str, hw: str, lease: int, name: str | None = "vm", ident: str | None = None) -> str:
    lines = ["{"]
    if name is not None:
        lines.append(f"\tname={name}")
    lines += [f"\tip_address={ip}", f"\thw_address={hw}"]
    lines.append(f"\tidentifier={ident or hw}")
    lines += [f"\tlease=0x{lease:x}", "}"]
    return "\n".join(lines) + "\n"


def ts(dt: datetime) -> int:
    return int(dt.timestamp())


# -- MACAddress ---------------------------------------------------------------------------------


def test_mac_parses_unpadded_octets_and_prints_padded() -> None:
    mac = MACAddress.parse("a:1b:3:4c:5d:6e")
    assert mac.octets == bytes([0x0A, 0x1B, 0x03, 0x4C, 0x5D, 0x6E])
    assert str(mac) == "0a:1b:03:4c:5d:6e"
    assert mac.unpadded() == "a:1b:3:4c:5d:6e"
    assert mac == MACAddress.parse("0A:1B:03:4C:5D:6E")
    assert hash(mac) == hash(MACAddress.parse("0a:1b:03:4c:5d:6e"))


@pytest.mark.parametrize(
    "bad", ["", "a:b:c:d:e", "a:b:c:d:e:f:0", "zz:1:2:3:4:5", "123:1:2:3:4:5", "a::2:3:4:5"]
)
def test_mac_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="MAC"):
        MACAddress.parse(bad)


def test_random_local_is_locally_administered_unicast() -> None:
    macs = {MACAddress.random_local() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        assert mac.octets[0] & 0x02, mac
        assert not mac.octets[0] & 0x01, mac


# -- parser -------------------------------------------------------------------------------------


def test_parse_sample() -> None:
    [lease] = parse_leases(SAMPLE)
    assert lease.ip == "192.168.64.2"
    assert lease.mac == MACAddress.parse("0a:1b:03:4c:5d:6e")
    assert lease.name == "debian"
    assert lease.identifier == "1,a:1b:3:4c:5d:6e"
    assert lease.expiry == datetime(2023, 11, 28, 12, 18, 38, tzinfo=UTC)


def test_missing_name_and_leading_spaces_are_fine() -> None:
    text = "{\n  ip_address=192.168.64.9\n    hw_address=1,2:0:0:0:0:1\n\tlease=0x6565da9e\n}\n"
    [lease] = parse_leases(text)
    assert lease.name is None and lease.identifier is None
    assert lease.mac == MACAddress.parse("02:00:00:00:00:01")


def test_duid_entries_have_no_mac_and_never_match() -> None:
    duid = "ff,f1:f5:dd:7f:0:2:0:0:ab:11:d5:aa:2c:8a:3:1c:77:8"
    mac = MACAddress.parse("a:1b:3:4c:5d:6e")
    text = block("192.168.64.5", duid, ts(NOW) + 600, ident=duid) + SAMPLE
    leases = parse_leases(text)
    assert [le.mac for le in leases] == [None, mac]
    assert leases[0].hw_address == duid
    assert newest_lease_for(leases, mac, NOW).ip == "192.168.64.2"  # type: ignore[union-attr]


def test_newest_unexpired_lease_wins() -> None:
    mac = MACAddress.parse("2:0:0:0:0:7")
    other = MACAddress.parse("2:0:0:0:0:8")
    text = (
        block("192.168.64.3", "1,2:0:0:0:0:7", ts(NOW) + 100)
        + block("192.168.64.4", "1,2:0:0:0:0:7", ts(NOW) + 900)  # duplicate, later expiry: wins
        + block("192.168.64.5", "1,2:0:0:0:0:7", ts(NOW) - 1)  # expired
        + block("192.168.64.6", "1,2:0:0:0:0:8", ts(NOW) - 50)  # only an expired one
    )
    leases = parse_leases(text)
    assert len(leases) == 4
    assert newest_lease_for(leases, mac, NOW).ip == "192.168.64.4"  # type: ignore[union-attr]
    assert newest_lease_for(leases, "02:00:00:00:00:07", NOW).ip == "192.168.64.4"  # type: ignore[union-attr]
    assert newest_lease_for(leases, other, NOW) is None
    assert newest_lease_for(leases, mac, NOW + timedelta(seconds=1000)) is None
    assert newest_lease_for([], mac, NOW) is None


def test_default_now_is_the_real_clock() -> None:
    mac = MACAddress.parse("2:0:0:0:0:9")
    live = Lease("192.168.64.9", mac, datetime.now(UTC) + timedelta(hours=1))
    dead = Lease("192.168.64.10", mac, datetime.now(UTC) - timedelta(hours=1))
    assert newest_lease_for([dead, live], mac) == live


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{\n\tip_address=1.2.3.4\n\tlease=0x1\n", "never closed"),
        ("\tip_address=1.2.3.4\n", "line 1"),
        ("}\n", "line 1"),
        ("{\n\tip_address=1.2.3.4\n{\n", "line 3"),
        ("{\n\tip_address=1.2.3.4\n\tlease=zz\n}\n", "line 1.*lease"),
        ("{\n\tip_address=1.2.3.4\n}\n", "no lease="),
        ("{\n\tlease=0x10\n}\n", "no ip_address="),
        ("{\n\tip_address=1.2.3.4\n\thw_address=1,1:2:3\n\tlease=0x10\n}\n", "MAC"),
        ("{\n\tip_address=1.2.3.4\n\thw_address=nocomma\n\tlease=0x10\n}\n", "hw_address"),
        ("{\n\t=x\n}\n", "line 2"),
    ],
)
def test_malformed_input_is_a_clear_error(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=f"dhcpd_leases.*{where}"):
        parse_leases(text)


def test_read_leases(tmp_path: Path) -> None:
    assert read_leases(tmp_path / "absent") == []
    p = tmp_path / "dhcpd_leases"
    p.write_text(SAMPLE)
    assert len(read_leases(p)) == 1
    p.write_text("{\n")
    with pytest.raises(ValueError, match=str(p)):
        read_leases(p)


# -- writer -------------------------------------------------------------------------------------


def test_writer_uses_the_exact_bootpd_format(tmp_path: Path) -> None:
    p = tmp_path / "dhcpd_leases"
    lease = Lease(
        ip="192.168.64.2",
        mac=MACAddress.parse("0a:1b:03:4c:5d:6e"),
        expiry=datetime(2023, 11, 28, 12, 18, 38, tzinfo=UTC),
        name="debian",
    )
    add_lease(p, lease)
    assert p.read_text() == SAMPLE
    assert format_leases(parse_leases(SAMPLE)) == SAMPLE


def test_writer_round_trip_most_recent_first(tmp_path: Path) -> None:
    p = tmp_path / "db" / "dhcpd_leases"
    duid = "ff,f1:f5:dd:7f:0:2"
    p.parent.mkdir()
    p.write_text(block("192.168.64.50", duid, ts(NOW) + 10, name=None))
    a = Lease("192.168.64.2", MACAddress.parse("2:0:0:0:0:a"), NOW + timedelta(seconds=600), "a")
    b_mac = MACAddress.parse("2:0:0:0:0:b")
    b = Lease("192.168.64.3", b_mac, NOW + timedelta(seconds=700), None, "1,2:0:0:0:0:b")
    add_lease(p, a)
    add_lease(p, b)
    leases = read_leases(p)
    assert [le.ip for le in leases] == ["192.168.64.3", "192.168.64.2", "192.168.64.50"]
    assert leases[0] == b
    assert leases[1] == dataclasses.replace(a, identifier="1,2:0:0:0:0:a")  # defaulted from the MAC
    assert leases[2].mac is None and leases[2].hw_address == duid
    assert "\thw_address=1,2:0:0:0:0:a\n" in p.read_text()
    assert "\tlease=0x" in p.read_text()

    # a renewal for the same MAC replaces its old lease; so does a new client on the same IP
    a2 = Lease("192.168.64.2", a.mac, NOW + timedelta(seconds=900), "a")
    add_lease(p, a2)
    c = Lease("192.168.64.3", MACAddress.parse("2:0:0:0:0:c"), NOW + timedelta(seconds=800), "c")
    add_lease(p, c)
    assert [(le.ip, le.name) for le in read_leases(p)] == [
        ("192.168.64.3", "c"), ("192.168.64.2", "a"), ("192.168.64.50", None)
    ]

    assert remove_leases_for(p, "02:00:00:00:00:0a") == 1
    assert remove_leases_for(p, a.mac) == 0  # type: ignore[arg-type]
    assert [le.ip for le in read_leases(p)] == ["192.168.64.3", "192.168.64.50"]
    assert remove_leases_for(tmp_path / "absent", a.mac) == 0  # type: ignore[arg-type]
    assert not (tmp_path / "absent").exists()
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    assert sorted(x.name for x in p.parent.iterdir()) == ["dhcpd_leases", "dhcpd_leases.lock"]


def _writer(path: str, worker: int, count: int) -> None:
    for i in range(count):
        mac = MACAddress(bytes([0x02, 0, 0, 0, worker, i]))
        expiry = datetime.now(UTC) + timedelta(hours=1)
        add_lease(path, Lease(f"127.100.{worker}.{i + 2}", mac, expiry, "sim"))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    p = tmp_path / "dhcpd_leases"
    workers, count = 6, 25
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(p), w, count)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    leases = read_leases(p)
    assert len(leases) == workers * count
    assert {le.ip for le in leases} == {f"127.100.{w}.{i + 2}" for w in range(workers) for i in range(count)}
