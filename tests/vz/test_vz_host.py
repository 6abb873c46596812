"""The host as the vz driver reads it: the real macOS version behind the 16.0 compatibility answer
(cpython#135675), and the refusal of root."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shoes_vz.vm.drivers import vz_host
from shoes_vz.vm.drivers.vz_errors import VZDriverError
from shoes_vz.vm.exit_status import VMExit


def answers(**by_tool: str):  # type: ignore[no-untyped-def]
    calls: list[list[str]] = []

    def ask(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return by_tool.get(argv[0], "")

    ask.calls = calls  # type: ignore[attr-defined]
    return ask


@pytest.mark.parametrize(
    ("mac_ver", "tools", "expected"),
    [
        ("16.0", {"sysctl": "26.1"}, (26, 1)),          # an old-SDK interpreter on Tahoe: the kernel knows
        ("16.0", {"sw_vers": "26.0.1"}, (26, 0)),       # no sysctl answer: sw_vers (a current binary)
        ("16.0", {}, (26, 0)),                          # nobody else answers: 16 can only be 26
        ("15.5", {}, (15, 5)),
        ("15.5", {"sysctl": "15.5"}, (15, 5)),
        ("26.2", {"sysctl": "26.2"}, (26, 2)),
        ("", {"sysctl": "26.1"}, (0, 0)),               # not macOS
    ],
)
def test_the_real_macos_version(mac_ver: str, tools: dict[str, str], expected: tuple[int, int]) -> None:
    assert vz_host.real_macos_version(mac_ver, answers(**tools)) == expected


def test_the_kernel_is_asked_first() -> None:
    ask = answers(sysctl="26.1", sw_vers="16.0")
    assert vz_host.real_macos_version("16.0", ask) == (26, 1)
    assert ask.calls == [["sysctl", "-n", "kern.osproductversion"]]  # type: ignore[attr-defined]


def test_tools_are_asked_without_the_compatibility_shim() -> None:
    assert vz_host._ask(["sh", "-c", "echo $SYSTEM_VERSION_COMPAT"]) == "0"  # a real process
    assert vz_host._ask(["/no/such/tool"]) == "" and vz_host._ask(["false"]) == ""


def test_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vz_host, "effective_uid", lambda: 0)
    with pytest.raises(VZDriverError, match="refuses to run as root") as e:
        vz_host.refuse_root("the vz driver")
    assert e.value.exit is VMExit.CONFIG_ERROR
    monkeypatch.setattr(vz_host, "effective_uid", lambda: 501)
    vz_host.refuse_root("the vz driver")
