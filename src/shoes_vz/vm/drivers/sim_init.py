"""PID 1 of a namespaced sim guest: builds its file system, brings up its network, runs its daemons.

    unshare --pid --fork --kill-child --mount --net --uts --ipc -- python -m shoes_vz.vm.drivers.sim_init CONFIG

Started by `vm run` (`sim_guest`); CONFIG is JSON. It talks to `vm run` in lines: events as JSON on
stdout (`ready` with its pid as the host sees it, `address`, `sshd`, `exit`), commands on stdin
(`link` once `eth0` has been moved in, `stop GRACE`; end of file means `vm run` is gone: kill all).

The guest's root is a fresh tmpfs, then `pivot_root`, so nothing of the host is mounted in it but:
`/usr` and `/etc` read-only (with the template's `sim/root/usr` and `sim/root/etc` layered over them
when it has them) and the guest's own `/etc/passwd`, `group`, `hosts`, `hostname`; the template
read-only at `/template` (a `sim/id_ed25519` of an older template masked); its own `/proc` (PID
namespace), `/sys` (network namespace), `/dev`, `/run`; and from the bundle's `guest/` directory its
writable `/tmp`, `/var`, home, `/run/vsock` (the runner channel) and `/run/shoes-vz` (the
runner-agent's per-boot files). Every mount is nosuid and the daemons run with no_new_privs as the
unprivileged guest user: set-uid binaries of the host give nothing. As PID 1 it reaps orphans; when
it dies, for whatever reason, the kernel kills every process of the guest.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from shoes_vz.vm.drivers import sim_sys
from shoes_vz.vm.drivers.sim_sys import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REMOUNT, bind, mount

GUEST_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"
DHCP_RELEASE_WINDOW = 3.0  # seconds a stopping guest's DHCP client has to give its address back
OPT = "/opt/shoes-vz"  # where the driver's files for this guest are seen (read-only)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_out = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _out:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def host_pid() -> int:
    """This process's pid in the host's PID namespace (the host's /proc is still mounted)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[1])
    raise OSError("no NSpid in /proc/self/status")


def _dir(path: str, mode: int = 0o755) -> str:
    os.makedirs(path, mode=mode, exist_ok=True)
    return path


def _layered(root: str, name: str, template_root: str) -> None:
    """`/name` read-only: the host's, with the template's `sim/root/name` over it when there is one."""
    target = _dir(f"{root}/{name}")
    upper = f"{template_root}/{name}"
    if os.path.isdir(upper):
        for p in (upper, f"/{name}"):
            if ":" in p or "," in p:
                raise OSError(f"cannot layer {p}: ':' or ',' in the path")
        mount("overlay", target, "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, f"lowerdir={upper}:/{name}")
    else:
        bind(f"/{name}", target)


def build_root(cfg: dict[str, Any]) -> None:
    root, guest, template = cfg["root"], cfg["guest"], cfg["template"]
    template_root = f"{template}/sim/root"
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    _layered(root, "usr", template_root)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged-/usr symlinks, or directories
        host = f"/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"{root}/{name}")
        elif os.path.isdir(host):
            bind(host, _dir(f"{root}/{name}"))
    _layered(root, "etc", template_root)
    for name in ("passwd", "group", "hosts", "hostname"):
        target = f"{root}/etc/{name}"
        if os.path.isfile(target) and not os.path.islink(target):
            bind(f"{guest}/etc/{name}", target)
    if os.path.isdir(f"{template_root}/opt"):
        bind(f"{template_root}/opt", _dir(f"{root}/opt"))
    bind(f"{guest}/opt", _dir(f"{root}{OPT}"))
    bind(template, _dir(f"{root}/template"))
    secret = f"{root}/template/sim/id_ed25519"  # an older template's shared client key: never the guest's
    if os.path.exists(secret):
        bind("/dev/null", secret)
    mount("proc", _dir(f"{root}/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", _dir(f"{root}/sys"), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _devices(_dir(f"{root}/dev"))
    mount("tmpfs", _dir(f"{root}/run"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=8m")
    user_run = _dir(f"{root}/run/user/{cfg['uid']}", 0o700)
    os.chown(user_run, cfg["uid"], cfg["gid"])
    # the VM's vsock device (the runner channel's socket) and the runner-agent's per-boot files
    bind(f"{guest}/vsock", _dir(f"{root}/run/vsock"), read_only=False, extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    bind(f"{guest}/state", _dir(f"{root}/run/shoes-vz"), read_only=False, extra=MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in ("tmp", "var"):
        bind(f"{guest}/{name}", _dir(f"{root}/{name}"), read_only=False)
    bind(f"{guest}/home", _dir(f"{root}{cfg['home']}"), read_only=False)
    old = _dir(f"{root}/.oldroot")
    sim_sys.pivot_root(root, old)
    os.chdir("/")
    sim_sys.umount("/.oldroot", sim_sys.MNT_DETACH)  # nothing of the host stays mounted in the guest
    os.rmdir("/.oldroot")
    mount("none", "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _devices(dev: str) -> None:
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        Path(f"{dev}/{name}").touch()
        bind(f"/dev/{name}", f"{dev}/{name}", read_only=False, extra=MS_NOSUID | MS_NOEXEC)
    mount("devpts", _dir(f"{dev}/pts"), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    mount("tmpfs", _dir(f"{dev}/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def network_up() -> None:
    settings = [(f"/proc/sys/net/ipv6/conf/{c}/disable_ipv6", "1") for c in ("all", "default", "lo", "eth0")]
    # this network namespace is the guest's alone: its unprivileged user may listen on any port (sshd :22)
    settings.append(("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"))
    for path, value in settings:  # IPv4 only, as the NAT network it models
        try:
            Path(path).write_text(value)
        except OSError:
            pass
    subprocess.run(["ip", "-batch", "-"], input=b"link set dev lo up\nlink set dev eth0 up\n", check=True,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


class Guest:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.names: dict[int, str] = {}
        self.stopping = threading.Event()
        self.empty = threading.Event()

    def spawn(self, name: str, argv: list[str], *, as_guest: bool) -> None:
        c = self.cfg
        env = {"PATH": GUEST_ENV_PATH, "LANG": "C.UTF-8"}
        kw: dict[str, Any] = {}
        if as_guest:
            env.update(HOME=c["home"], USER=c["user"], LOGNAME=c["user"], SHELL="/bin/bash")
            kw = dict(user=c["uid"], group=c["gid"], extra_groups=[], cwd=c["home"], preexec_fn=sim_sys.no_new_privs)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, **kw)
        self.names[proc.pid] = name
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout, name), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[bytes], name: str) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("shoes-vz-address "):
                emit("address", ip=line.split()[1])
                continue
            if name == "sshd" and "Server listening on" in line:
                emit("sshd", listening=True)
            now = time.time()
            sys.stderr.write(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d} "
                             f"[guest {name}] {line}\n")
            sys.stderr.flush()

    def start_daemons(self) -> None:
        c = self.cfg
        dhcp = [*c["dhcp"], "-f", "-i", "eth0", "-s", f"{OPT}/udhcpc.script", "-T", "1", "-t", "3",
                "-A", str(max(1, round(c["dhcp_timeout"]))), "-x", f"hostname:{c['hostname']}"]
        if c["dhcp_release"]:
            dhcp.append("-R")  # a clean shutdown gives the address back
        if c.get("request_ip"):
            dhcp += ["-r", c["request_ip"]]  # a restored guest asks for the address it had
        self.spawn("dhcp", dhcp, as_guest=False)
        self.spawn("sshd", [c["sshd"], "-D", "-e", "-f", f"{OPT}/sshd_config"], as_guest=True)
        ra = c["runner_agent"]
        self.spawn("runner-agent", [c["python"], "-I", f"{OPT}/runner-agent.py", "--notify-url", ra["notify_url"],
                                    "--listen", f"0.0.0.0:{ra['port']}", "--runner-dir", ra["runner_dir"],
                                    "--runner-id", ra["runner_id"], "--channel", ra["channel"],
                                    "--state-dir", ra["state_dir"], "--clock", "model",
                                    *(["--resumed"] if ra.get("resumed") else [])], as_guest=True)

    def stop(self, grace: float) -> None:
        """A shutdown: every process is asked to end, the DHCP client last (it releases the address
        while the network is still there); whatever is left after `grace` is killed."""
        self.stopping.set()
        if grace > 0:
            dhcp = {p for p, n in self.names.items() if n == "dhcp"}
            for pid in _pids() - dhcp - {1}:  # the DHCP client's own hook runs to its end
                if _parent(pid) not in dhcp:
                    _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _pids() - dhcp - {1} and time.monotonic() < deadline:
                if self.empty.wait(0.02):
                    break
            for pid in dhcp:
                _signal(pid, signal.SIGTERM)
            # the client's release and its deconfig hook get a window of their own: under load, the
            # rest of the grace may be spent, and a client killed early leaves its lease for 24 h
            self.empty.wait(DHCP_RELEASE_WINDOW)
        _kill_all(signal.SIGKILL)

    def commands(self) -> None:
        """stdin: `link` (eth0 is here), `stop GRACE`; EOF: `vm run` is gone — kill everything now."""
        linked = False
        for raw in sys.stdin:
            words = raw.split()
            if words[:1] == ["link"] and not linked:
                linked = True
                try:
                    network_up()
                    self.start_daemons()
                except (OSError, subprocess.SubprocessError) as e:
                    emit("error", message=f"guest start failed: {e}")
                    self.stop(0)
                    return
            elif words[:1] == ["stop"]:
                self.stop(float(words[1]) if len(words) > 1 else 0.0)
                return
        self.stop(0)

    def reap(self) -> None:
        """PID 1's duty: reap every child and orphan; report the daemons' ends."""
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                if self.stopping.is_set():
                    self.empty.set()
                    return
                self.stopping.wait(0.05)
                continue
            name = self.names.pop(pid, None)
            if name is not None:
                emit("exit", name=name, status=os.waitstatus_to_exitcode(status))


def _pids() -> set[int]:
    return {int(n) for n in os.listdir("/proc") if n.isdigit()}


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_all(sig: int) -> None:
    try:
        os.kill(-1, sig)  # from PID 1: every process of this namespace but itself
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = json.loads(args[0])
    try:
        emit("ready", pid=host_pid())
        build_root(cfg)
        socket.sethostname(cfg["hostname"])
    except OSError as e:
        emit("error", message=f"cannot build the guest: {e}")
        return 1
    guest = Guest(cfg)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=guest.stop, args=(5.0,), daemon=True).start())
    threading.Thread(target=guest.commands, daemon=True).start()
    guest.reap()
    return 0


if __name__ == "__main__":
    sys.exit(main())
