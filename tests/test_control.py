"""The vm process's control socket, including bundles deeper than a Unix socket address allows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shoes_vz.vm import control
from shoes_vz.vm.bundle import SOCKET_PATH_MAX, Bundle


def _serve(bundle: Bundle) -> control.ControlServer:
    server = control.ControlServer(bundle.control_socket, lambda cmd, _req: {"echo": cmd})
    server.start()
    return server


@pytest.mark.parametrize("depth", [1, 12])
async def test_request_reaches_the_vm_process(tmp_path: Path, depth: int) -> None:
    deep = tmp_path.joinpath(*(["deeper-directory"] * depth))
    bundle = Bundle(deep / "0123456789abcdef.bundle")
    bundle.path.mkdir(parents=True)
    sock = bundle.control_socket
    assert len(os.fsencode(sock)) <= SOCKET_PATH_MAX
    inside = len(os.fsencode(bundle.path / "control.sock")) <= SOCKET_PATH_MAX
    assert (sock.parent == bundle.path) is inside
    assert Bundle(bundle.path).control_socket == sock  # the agent computes the same address
    server = _serve(bundle)
    try:
        assert await control.request(sock, "status") == {"ok": True, "echo": "status"}
        assert (await control.request(sock, "bogus"))["ok"] is False
        if not inside:
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    finally:
        server.close()
    assert not sock.exists()


def test_a_shared_socket_dir_made_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    bundle = Bundle(tmp_path.joinpath(*(["d" * 60] * 3)) / "x.bundle")
    open_dir = bundle.control_socket.parent
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(PermissionError, match="mode 0700"):
        control.ControlServer(bundle.control_socket, lambda cmd, _req: {})
