"""Nothing outside the repository is touched at test time: a session-wide audit hook (PEP 578).

The forbidden places are the repository's surroundings: every entry of the directory that holds the
checkout (and, for a git worktree, of the one that holds the main checkout), as they are when the
session starts. A sibling such as `../shared` is the case this exists for: a clone has nothing
beside it. Every file-system audit event of the test process, and every path handed to a process it
starts, is checked; through `repo_boundary_site/sitecustomize.py` on PYTHONPATH the same hook runs in
every Python process the tests start (vm processes, benchmarks, the plugin). A violation is recorded
with the test that was running, and the session fails at its end listing each one.

Places of the system (the interpreter, /usr, /etc, /proc, /dev, the temp dir, pytest's temp root,
$HOME) are never forbidden, unless one of them holds the repository.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "SHOESVZ_TEST_BOUNDARY"  # JSON: the boundary, for the processes the tests start
SITE_DIR = Path(__file__).resolve().with_name("repo_boundary_site")
SYSTEM = ("/usr", "/etc", "/proc", "/sys", "/dev", "/run", "/var", "/lib", "/lib64", "/bin", "/sbin")

# audit event → positions of its path arguments (os.symlink's target is a string, not an access)
PATH_EVENTS: dict[str, tuple[int, ...]] = {
    "open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.chdir": (0,), "os.mkdir": (0,),
    "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
    "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "glob.glob": (0,),
    "glob.glob/2": (0, 2), "shutil.copyfile": (0, 1), "shutil.copytree": (0, 1), "shutil.rmtree": (0,),
    "shutil.move": (0, 1), "sqlite3.connect": (0,),
}


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r if r.endswith("/") else r + "/") for r in roots)


def surroundings(repo: Path) -> list[Path]:
    """The directories beside which a checkout at `repo` stands."""
    places = [repo.parent]
    dotgit = repo / ".git"
    if dotgit.is_file():  # a git worktree: .git says "gitdir: MAIN/.git/worktrees/NAME"
        gitdir = Path(dotgit.read_text().split("gitdir:", 1)[1].strip())
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        places.append(common.parent.parent)
    return places


@dataclass
class Boundary:
    repo: str
    forbidden: list[str]  # these and everything under them
    exact: list[str]  # only these (the directories holding the checkout: listing them is forbidden)
    allowed: list[str]
    report: str = ""  # processes the tests start append their violations here
    violations: list[str] = field(default_factory=list)

    @classmethod
    def around(cls, repo: Path, report: str = "", extra_allowed: Sequence[str] = ()) -> Boundary:
        repo = repo.resolve()
        system = [*SYSTEM, sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(),
                  str(Path.home()), *extra_allowed]
        real = {os.path.realpath(p) for p in system}
        # a place that holds the checkout is not allowed wholesale; one inside it needs no allowing
        allowed = sorted(p for p in real if not _under(str(repo), [p]) and not _under(p, [str(repo)]))
        forbidden: set[str] = set()
        exact: set[str] = set()
        for place in map(str, surroundings(repo)):
            exact.add(place)
            if any(_under(a, [place]) for a in allowed):  # e.g. a checkout in /tmp, $HOME or /
                forbidden |= {str(p) for p in Path(place).iterdir()} - {str(repo)}  # what is there now
            else:
                forbidden.add(place)  # all of it, also what appears later
        return cls(str(repo), sorted(forbidden), sorted(exact), allowed, report)

    def outside(self, path: str) -> bool:
        p = os.path.abspath(path)
        if _under(p, [self.repo]):
            return False
        return p in self.exact or (_under(p, self.forbidden) and not _under(p, self.allowed))

    def check(self, event: str, args: tuple[Any, ...]) -> None:
        for path, cwd, is_argument in _paths_of(event, args):
            where = os.path.join(cwd, path) if cwd else path
            # a relative word handed to a process may be a name (`--label ../evil`): a path if it exists
            if self.outside(where) and not (is_argument and not os.path.isabs(path) and not os.path.exists(where)):
                self.record(f"{event} {path!r}" + (f" (cwd {cwd})" if cwd else ""))

    def record(self, what: str) -> None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0] or "outside a test"
        line = f"{what} in {test} (pid {os.getpid()})"
        self.violations.append(line)
        if self.report and os.getpid() != _MAIN_PID:
            with open(self.report, "a") as f:  # O_APPEND: one line per write, never interleaved
                f.write(line + "\n")

    def all_violations(self) -> list[str]:
        """Ours, then those of the processes the tests started."""
        theirs = Path(self.report).read_text().splitlines() if self.report and os.path.exists(self.report) else []
        return [*self.violations, *theirs]

    def child_env(self) -> dict[str, str]:
        """What a child process needs to run the same hook (PYTHONPATH finds sitecustomize)."""
        spec = {"repo": self.repo, "forbidden": self.forbidden, "exact": self.exact, "allowed": self.allowed,
                "report": self.report, "module": str(Path(__file__).resolve())}
        path = os.pathsep.join(p for p in (str(SITE_DIR), os.environ.get("PYTHONPATH", "")) if p)
        return {ENV: json.dumps(spec), "PYTHONPATH": path}


def _fs(value: Any) -> str | None:
    if isinstance(value, str | bytes | os.PathLike):
        path = os.fsdecode(value)
        return path or None
    return None  # a file descriptor, or None


def _paths_of(event: str, args: tuple[Any, ...]) -> Iterator[tuple[str, str, bool]]:
    """(path, directory it is relative to or "", whether it is a word handed to a process) for each
    path an audit event names."""
    if event in PATH_EVENTS:
        for i in PATH_EVENTS[event]:
            if i < len(args) and (p := _fs(args[i])) and p != ":memory:":
                yield p, "", False
        return
    if event in ("subprocess.Popen", "os.exec", "os.posix_spawn"):
        program, argv = args[0], args[1]
        cwd = (_fs(args[2]) or "") if event == "subprocess.Popen" else ""
        if cwd:
            yield cwd, "", False
        words = [argv] if isinstance(argv, str | bytes) else list(argv or ())
        for word in [program, *words]:
            text = _fs(word)
            for part in (text, text.partition("=")[2]) if text else ():
                if part.startswith(("/", "./", "../")) or part == "..":  # a path, not a flag
                    yield part, cwd, True


_MAIN_PID = os.getpid()
_ACTIVE: list[Boundary] = []
_busy = threading.local()
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _ACTIVE or getattr(_busy, "on", False) or (event not in PATH_EVENTS and event not in (
            "subprocess.Popen", "os.exec", "os.posix_spawn")):
        return
    _busy.on = True  # the hook's own file access (the report) must not re-enter it
    try:
        for boundary in list(_ACTIVE):
            boundary.check(event, args)
    finally:
        _busy.on = False


def _activate(boundary: Boundary) -> None:
    global _installed
    if not _installed:  # hooks cannot be removed: one hook serves every boundary
        sys.addaudithook(_hook)
        _installed = True
    _ACTIVE.append(boundary)


@contextmanager
def watching(boundary: Boundary) -> Iterator[Boundary]:
    """Check every audit event against `boundary` while the block runs."""
    _activate(boundary)
    try:
        yield boundary
    finally:
        _ACTIVE.remove(boundary)


def install_from_env() -> None:
    """In a process the tests started (sitecustomize): the boundary its parent handed down."""
    global _MAIN_PID
    spec = json.loads(os.environ[ENV])
    _MAIN_PID = -1  # this is a child: report every violation to the file
    _activate(Boundary(spec["repo"], spec["forbidden"], spec["exact"], spec["allowed"], spec["report"]))


# -- pytest: one boundary for the whole session ------------------------------------------------------

_SESSION: dict[str, Any] = {}


def pytest_sessionstart(session: Any) -> None:
    fd, report = tempfile.mkstemp(prefix="shoes-vz-boundary-", suffix=".log")
    os.close(fd)
    boundary = Boundary.around(Path(str(session.config.rootpath)), report,
                               extra_allowed=[str(Path(tempfile.gettempdir()) / f"pytest-of-{_user()}")])
    _SESSION["saved_env"] = {k: os.environ.get(k) for k in (ENV, "PYTHONPATH")}
    os.environ.update(boundary.child_env())
    _activate(boundary)
    _SESSION["boundary"] = boundary


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    boundary: Boundary | None = _SESSION.pop("boundary", None)
    if boundary is None:
        return
    _ACTIVE.remove(boundary)
    for k, v in _SESSION.pop("saved_env").items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _SESSION["violations"] = boundary.all_violations()
    os.unlink(boundary.report)
    if _SESSION["violations"]:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    violations = _SESSION.get("violations")
    if violations:
        terminalreporter.section("read outside the repository", sep="=", red=True, bold=True)
        for line in violations:
            terminalreporter.line(line)
        terminalreporter.line(f"{len(violations)} access(es) outside the repository: the session fails")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
