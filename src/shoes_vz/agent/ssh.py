"""SSH-ready detection and the detached setup_script (DESIGN §7)."""

from __future__ import annotations

import asyncio
import shlex
import time

import asyncssh

from shoes_vz.core.errors import RunnerFailed

RETRY_INTERVAL = 0.02  # fast retries: the probe's lag is what a runner's startup pays for

# The script goes over stdin into the guest and runs under nohup in its own session, output to a
# log; the command returns as soon as it has started (run.sh stays in the foreground there). The
# script holds a registration token: its file, its log and their directory are made the login user's
# alone (umask 077); the script itself then runs with the usual umask 022.
_DETACH = (
    'umask 077; d="${SHOESVZ_GUEST_HOME:-$HOME}"; s="$d/.shoes-vz"; mkdir -p "$s" && cat > "$s/setup.sh" && '
    ': > "$s/setup.log" && cd "$d" && if command -v setsid >/dev/null 2>&1; then r="setsid"; else r=""; fi; '
    '( umask 022; $r nohup /bin/sh "$s/setup.sh" >> "$s/setup.log" 2>&1 < /dev/null & echo $! > "$s/setup.pid" ) '
    '&& cat "$s/setup.pid"'
)


async def wait_ready(
    host: str,
    port: int,
    user: str,
    client_key: asyncssh.SSHKey | tuple[asyncssh.SSHKey, asyncssh.SSHCertificate],
    host_key: asyncssh.SSHKey,
    timeout: float,
    setting: str = "ip_to_ssh_timeout",
) -> asyncssh.SSHClientConnection:
    """Connect with the pinned host key and run `true`; retry fast until `timeout` (the agent's
    `setting`, named in the error) passes. `client_key` is a key, or a (key, certificate) pair.

    A guest that answers with another host key is not our VM: that fails at once.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = await asyncssh.connect(
                host, port, username=user, client_keys=[client_key],
                known_hosts=([host_key], [], []), connect_timeout=max(0.5, min(5.0, deadline - time.monotonic())),
                agent_path=None, config=None, preferred_auth="publickey",
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise RunnerFailed(f"{host}:{port} answered with an unexpected SSH host key: not our VM ({e})") from e
        except (TimeoutError, OSError, asyncssh.Error) as e:
            last = e
            await asyncio.sleep(RETRY_INTERVAL)
            continue
        try:
            result = await conn.run("true", check=False)
        except (OSError, asyncssh.Error) as e:
            conn.close()
            last = e
            await asyncio.sleep(RETRY_INTERVAL)
            continue
        if result.exit_status == 0:
            return conn
        conn.close()
        last = RunnerFailed(f"`true` exited {result.exit_status}")
        await asyncio.sleep(RETRY_INTERVAL)
    raise RunnerFailed(f"SSH on {host}:{port} not ready within {setting} ({timeout:g}s; last error: {last})")


START_TIMEOUT = 30.0


async def start_detached(conn: asyncssh.SSHClientConnection, script: str, timeout: float = START_TIMEOUT) -> int:
    """Start `script` detached in the guest; return its pid without waiting for it."""
    # an empty `input` is never written, and without its EOF `cat` would wait: no script is /dev/null
    stdin: dict[str, object] = {"input": script} if script else {"stdin": asyncssh.DEVNULL}
    try:
        result = await asyncio.wait_for(conn.run(_DETACH, check=False, **stdin), timeout)  # type: ignore[arg-type]
    except TimeoutError:
        raise RunnerFailed(f"setup_script did not start within {timeout:g}s (the guest's shell did not "
                           "answer)") from None
    out = str(result.stdout or "").strip()
    if result.exit_status != 0 or not out.isdigit():
        raise RunnerFailed(
            f"setup_script did not start (exit {result.exit_status}): {str(result.stderr or '')[:500]}"
        )
    return int(out)


def quote(s: str) -> str:
    return shlex.quote(s)
