"""On PYTHONPATH of the server the gRPC fuzzer starts (tests/security/fuzz_grpc.py): every write the
process makes outside the directories it was given (SHOESVZ_FUZZ_WRITES: {"allowed": [...], "report":
path}) is appended to the report, which fails the fuzz run.

It shadows other sitecustomize modules, so it also runs the test session's repository-boundary hook
when the session handed one down (tests/repo_boundary_site/sitecustomize.py does the same)."""

import importlib.util
import json
import os
import sys
import threading

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir": 0, "os.rename": 0, "os.remove": 0, "os.rmdir": 0, "os.chmod": 0, "os.chown": 0,
                "os.truncate": 0, "os.symlink": 1, "os.link": 1, "os.utime": 0, "shutil.rmtree": 0,
                "shutil.move": 1, "shutil.copyfile": 1, "sqlite3.connect": 0}


def _install(spec: dict) -> None:
    allowed = [os.path.realpath(p) for p in spec["allowed"]]
    report = spec["report"]
    busy = threading.local()

    def outside(path: object) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False  # a file descriptor
        p = os.path.realpath(os.fsdecode(path))
        return p != ":memory:" and not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)

    def hook(event: str, args: tuple) -> None:
        if getattr(busy, "on", False):
            return
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & _WRITE_FLAGS)
        elif event in _PATH_EVENTS:
            path, writes = args[_PATH_EVENTS[event]] if len(args) > _PATH_EVENTS[event] else None, True
        else:
            return
        if writes and outside(path):
            busy.on = True
            try:
                with open(report, "a") as f:
                    f.write(f"{event} {os.fsdecode(path)!r} (pid {os.getpid()})\n")
            finally:
                busy.on = False

    sys.addaudithook(hook)


if os.environ.get("SHOESVZ_FUZZ_WRITES"):
    _install(json.loads(os.environ["SHOESVZ_FUZZ_WRITES"]))

if os.environ.get("SHOESVZ_TEST_BOUNDARY"):
    _spec = importlib.util.spec_from_file_location(
        "_shoes_vz_repo_boundary", json.loads(os.environ["SHOESVZ_TEST_BOUNDARY"])["module"])
    if _spec is not None and _spec.loader is not None:
        _module = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        _module.install_from_env()
