"""Attacks of one runner's guest on another's identity, through the whole stack (server, agent, `vm run`)
on the namespaced sim, where guests are real hosts on one network (docs/security.md): a guest claims
another runner's MAC in notifies during its boot; a guest serves SSH with the template's host key on
its address; a runner's SSH certificate is used on another runner, and after it expired. Each test
performs the attack and fails if it works."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import asyncssh
import pytest
from simvm import TEST_CA, guest_login, runner_run
from stack_fixtures import SimStack, eventually, make_stack, require_namespaced

from shoes_vz.agent import ssh
from shoes_vz.agent.ssh_ca import source_address_toward
from shoes_vz.core.errors import RunnerFailed
from shoes_vz.wire import shoes_pb2_grpc as sgrpc

FLOOD = """
import json, socket, struct, sys, time, urllib.request
gw = ""
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "00000000" and f[2] != "00000000":
        gw = socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))
body = json.dumps({"runner_id": sys.argv[2], "ip_address": sys.argv[3], "mac_address": sys.argv[4]}).encode()
end = time.time() + float(sys.argv[5])
with open(sys.argv[6], "a") as log:
    while time.time() < end:
        req = urllib.request.Request(f"http://{gw}:{sys.argv[1]}/notify-ip", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            status = urllib.request.urlopen(req, timeout=2).status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError as e:
            status = type(e).__name__
        log.write(f"{status}\\n"); log.flush()
        time.sleep(0.02)
"""


def runner_named(stack: SimStack, name: str):  # type: ignore[no-untyped-def]
    return next((r for r in stack.agent.runners.values() if r.spec.runner_name == name), None)


async def test_a_guest_claiming_another_runners_mac_during_its_boot_gets_nothing(tmp_path: Path) -> None:
    """A is up; while B boots (widened: 3 s before its guest runs), A floods the agent's notify server
    from its own address with B's runner id and MAC. B must come up at B's own address, A's notifies
    are all refused, and B's setup_script (with its registration token) never reaches A."""
    require_namespaced()
    async with make_stack(tmp_path, sim_boot_delay=3.0) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            a_reply = await stack.add(stub, "victim-a-attacker")
            a = runner_named(stack, "victim-a-attacker")
            secret = f"B-SECRET-{secrets.token_hex(8)}"
            add_b = asyncio.create_task(stack.add(stub, "victim-b", f"echo {secret} > ~/b-marker\n"))
            b = await eventually(lambda: runner_named(stack, "victim-b"), timeout=10)
            assert b.ip == ""  # still booting: no lease, no address yet
            rc, out = await runner_run(stack.agent, a, (
                f"cat > /tmp/flood.py <<'EOF'\n{FLOOD}\nEOF\n"
                f"(setsid nohup python3 /tmp/flood.py {stack.agent.notify_port} {b.runner_id} {a_reply.ip_address} "
                f"{b.mac} 8 /tmp/flood.log > /tmp/flood.err 2>&1 < /dev/null &) ; echo flooding"))
            assert rc == 0 and "flooding" in out, out
            b_reply = await add_b
            await asyncio.sleep(0.5)
            _, log = await runner_run(stack.agent, a, "cat /tmp/flood.log /tmp/flood.err; grep -r B-SECRET ~ /tmp")
        statuses = [line for line in log.splitlines() if line.strip()]
        assert b_reply.ip_address and b_reply.ip_address != a_reply.ip_address
        assert b.ip == b_reply.ip_address and b.identity is not None
        assert len(statuses) > 10 and set(statuses) <= {"403"}, log[-800:]  # the lease cross-check refused each
        assert secret not in log, "B's setup_script reached A"
        b_home = b.bundle.guest_dir / "home"
        assert await eventually(lambda: secret in "".join(p.read_text() for p in b_home.rglob("b-marker")),
                                timeout=10)
        assert not any(secret in p.read_text(errors="replace") for p in (a.bundle.guest_dir / "home").rglob("*")
                       if p.is_file())


async def test_ssh_answered_with_the_templates_host_key_is_refused(tmp_path: Path) -> None:
    """A job in guest A runs a second sshd that serves the template's host key — which every guest of
    the template holds — and trusts the agent's CA for runner B. The agent pins B's per-boot host key,
    learned over B's channel: talking to that sshd as if it were B fails at once."""
    require_namespaced()
    async with make_stack(tmp_path) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            a_reply, b_reply = await stack.add(stub, "imp-a"), await stack.add(stub, "imp-b")
        a, b = runner_named(stack, "imp-a"), runner_named(stack, "imp-b")
        rc, out = await runner_run(stack.agent, a, (
            f"mkdir -p /tmp/imp && echo {b.runner_id} > /tmp/imp/principals && "
            "printf '%s\\n' 'ListenAddress 0.0.0.0:2299' 'HostKey /opt/shoes-vz/ssh_host_ed25519_key' "
            "'TrustedUserCAKeys /run/shoes-vz/user_ca.pub' 'AuthorizedPrincipalsFile /tmp/imp/principals' "
            "'AuthorizedKeysFile none' 'PidFile /tmp/imp/pid' 'StrictModes no' 'UsePAM no' > /tmp/imp/cfg && "
            "(setsid nohup $(command -v sshd || echo /usr/sbin/sshd) -D -e -f /tmp/imp/cfg > /tmp/imp/log 2>&1 "
            "< /dev/null &) ; sleep 0.5; cat /tmp/imp/log"))
        assert rc == 0, out
        meta = stack.template.meta
        cred = stack.agent.ca.issue(b.runner_id, 60, source_address_toward(a_reply.ip_address))
        assert b.identity is not None and b.ip == b_reply.ip_address
        # the attack works against a pin of the template's key (main's pin): the impostor is real ...
        conn = await ssh.wait_ready(a_reply.ip_address, 2299, meta.ssh_user, cred.client_key,
                                    asyncssh.import_public_key(meta.ssh_host_key), 10)
        conn.close()
        # ... and fails against the runner's own per-boot key
        t0 = time.monotonic()
        with pytest.raises(RunnerFailed, match="host key"):
            await ssh.wait_ready(a_reply.ip_address, 2299, meta.ssh_user, cred.client_key, b.identity.host_key, 10)
        assert time.monotonic() - t0 < 5
        assert b.identity.host_key.export_public_key() != asyncssh.import_public_key(
            meta.ssh_host_key).export_public_key(), "the runner's host key is the template's"


async def test_a_leaked_certificate_opens_no_other_runner_and_expires(tmp_path: Path) -> None:
    require_namespaced()
    async with make_stack(tmp_path) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            await stack.add(stub, "leak-a")
            await stack.add(stub, "leak-b")
        a, b = runner_named(stack, "leak-a"), runner_named(stack, "leak-b")
        assert a.identity is not None and b.identity is not None
        meta, ca = stack.template.meta, stack.agent.ca
        user, port = meta.ssh_user, meta.ssh_port

        async def login(cred, host_key) -> str:  # type: ignore[no-untyped-def]
            async with await asyncssh.connect(b.ip, port, username=user, client_keys=[cred.client_key],
                                              known_hosts=([host_key], [], []), agent_path=None,
                                              config=None) as conn:
                return str((await conn.run("echo in", check=False)).stdout)

        source = source_address_toward(b.ip)
        assert await login(ca.issue(b.runner_id, 60, source), b.identity.host_key) == "in\n"  # the control
        with pytest.raises(asyncssh.PermissionDenied):  # A's credential, as a job in A could leak it
            await login(ca.issue(a.runner_id, 60, source), b.identity.host_key)
        short = ca.issue(b.runner_id, 1, source)
        await asyncio.sleep(2.5)
        with pytest.raises(asyncssh.PermissionDenied):  # B's own, expired
            await login(short, b.identity.host_key)
        with pytest.raises(asyncssh.PermissionDenied):  # B's own, from an address it was not made for
            await login(ca.issue(b.runner_id, 60, "10.255.255.1"), b.identity.host_key)
        with pytest.raises(asyncssh.PermissionDenied):  # a certificate of another CA (another agent's)
            async with await guest_login(b.ip, port, user, b.runner_id, b.identity.host_key, TEST_CA):
                pass
