"""Nothing outside the repository is read at build, run or test time.

Two guards, each shown to catch what it exists for: the session-wide audit hook (repo_boundary.py:
every test, and every Python process the tests start, fails the session when it touches a path beside
the checkout) and a static scan of every tracked file (repo_scan.py: Makefile, .ci, scripts, interop,
benchmarks, src, tests, docs) with an empty allow-list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from repo_boundary import ENV, SITE_DIR, Boundary, surroundings, watching
from repo_scan import scan, tracked
from stack_fixtures import require

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
UP = ".." + "/"  # spelled apart, so that this file does not trip the scan it tests
SIBLING = "sha" + "red"
FILE = "__" + "file__"


@pytest.fixture
def neighbourhood(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout with something beside it: (repo, a secret file in its sibling)."""
    (repo := tmp_path / "repo").mkdir()
    (repo / "inside.txt").write_text("ours\n")
    (tmp_path / SIBLING).mkdir()
    (secret := tmp_path / SIBLING / "DESIGN.md").write_text("not ours\n")
    return repo, secret


# -- the audit hook ----------------------------------------------------------------------------------

def test_hook_records_reads_beside_the_checkout(neighbourhood: tuple[Path, Path]) -> None:
    repo, secret = neighbourhood
    with watching(Boundary.around(repo)) as boundary:
        (repo / "inside.txt").read_text()
        Path(os.path.join(repo, UP + SIBLING, "DESIGN.md")).read_text()  # relative climbs are resolved
        os.listdir(secret.parent)
        os.listdir(repo.parent)  # listing what stands beside the checkout is looking outside too
    assert boundary.violations[0].startswith(f"open '{repo}/{UP}{SIBLING}/DESIGN.md'")
    assert "test_hook_records_reads_beside_the_checkout" in boundary.violations[0]
    assert [v.split()[0] for v in boundary.violations] == ["open", "os.listdir", "os.listdir"]


def test_hook_records_paths_handed_to_a_process(neighbourhood: tuple[Path, Path]) -> None:
    repo, secret = neighbourhood
    with watching(Boundary.around(repo)) as boundary:
        subprocess.run(["cat", f"--file={secret}"], capture_output=True)
        subprocess.run(["true"], cwd=secret.parent)
        subprocess.run(["cat", "inside.txt"], cwd=repo, capture_output=True)
        subprocess.run(["echo", f"--label={UP}evil"], cwd=repo, capture_output=True)  # a name, not a path
        subprocess.run(["cat", f"{UP}{SIBLING}/DESIGN.md"], cwd=repo, capture_output=True)  # a path: it exists
    assert [v.split(" in ")[0] for v in boundary.violations] == [
        f"subprocess.Popen '{secret}'", f"subprocess.Popen '{secret.parent}'",
        f"subprocess.Popen '{UP}{SIBLING}/DESIGN.md' (cwd {repo})"]


def test_hook_leaves_the_system_and_the_temp_dir_alone(neighbourhood: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _ = neighbourhood
    with watching(Boundary.around(repo)) as boundary:
        Path("/etc/hostname").exists() and Path("/etc/hostname").read_text()
        os.listdir(sys.prefix)
        (tmp_path.parent / "elsewhere.txt").write_text("scratch\n")  # not beside the checkout
    assert boundary.violations == []


def test_hook_runs_in_python_processes_the_tests_start(neighbourhood: tuple[Path, Path], tmp_path: Path) -> None:
    repo, secret = neighbourhood
    report = tmp_path / "report.log"
    boundary = Boundary.around(repo, str(report))
    env = {**os.environ, **boundary.child_env()}
    done = subprocess.run([sys.executable, "-c", f"open({str(secret)!r}).read()"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line.split(" in ")[0] for line in boundary.all_violations()] == [f"open '{secret}'"]


def test_a_session_that_reads_beside_the_checkout_fails(neighbourhood: tuple[Path, Path]) -> None:
    repo, secret = neighbourhood
    (repo / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (repo / "test_peek.py").write_text(
        "import subprocess, sys\n\n"
        f"def test_peek():\n    open('{UP}{SIBLING}/DESIGN.md').read()\n\n"
        "def test_child_peeks():\n"
        f"    subprocess.run([sys.executable, '-c', 'import os; os.listdir(\"{secret.parent}\")'], check=True)\n")
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(TESTS)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "repo_boundary", "-p", "no:cacheprovider",
                           "test_peek.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert "2 passed" in done.stdout, done.stdout + done.stderr  # the tests themselves pass ...
    assert done.returncode == 1, done.stdout  # ... and the session fails, naming both accesses
    assert f"open '{UP}{SIBLING}/DESIGN.md' in test_peek.py::test_peek" in done.stdout
    assert f"os.listdir '{secret.parent}' in test_peek.py::test_child_peeks" in done.stdout


def test_this_session_is_watched() -> None:
    spec = json.loads(os.environ[ENV])
    assert spec["repo"] == str(REPO)
    assert str(REPO.parent) in spec["exact"]
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(SITE_DIR)


def test_a_worktree_is_watched_beside_its_main_checkout_too(tmp_path: Path) -> None:
    require(subprocess.run(["git", "--version"], capture_output=True).returncode == 0, "git")
    main, wt = tmp_path / "main", tmp_path / "wt" / "feature"
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(main)]
    main.mkdir()
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    subprocess.run([*git, "worktree", "add", "-q", str(wt)], check=True)
    assert surroundings(wt) == [wt.parent, tmp_path]


# -- the static scan ---------------------------------------------------------------------------------

def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    require((REPO / ".git").exists(), "a git checkout")
    files = tracked(REPO)
    assert any(rel == "Makefile" for _, rel in files) and any(rel.startswith("scripts/") for _, rel in files)
    findings = scan(REPO, files, json.loads(os.environ[ENV])["exact"])  # the places beside this checkout
    assert findings == [], "\n".join(findings)


def fake_repo(root: Path, files: dict[str, str]) -> list[tuple[str, str]]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return [("100644", rel) for rel in files]


def test_scan_finds_every_kind_of_escape(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    files = fake_repo(repo, {
        "Makefile": f"docs:\n\tcp {UP}{SIBLING}/DESIGN.md docs/\n",
        ".ci/run": f'cd "$(dirname "$0")/{UP}.."\n',
        "tests/vz/conftest.py": f"SDK = Path({FILE}).resolve().parents[3] / 'vz-api'\n",
        "src/pkg/mod.py": f"ROOT = Path({FILE}).parent.parent.parent.parent\n",
        "benchmarks/b.py": f"import os\nHERE = os.path.dirname(os.path.dirname(os.path.dirname({FILE})))\n",
        "scripts/s": f"cat {tmp_path}/notes.txt\n",
        "docs/x.md": f"see [the design](../{UP}{SIBLING}/DESIGN.md)\n",
    })
    os.symlink(f"{UP}{UP}elsewhere", repo / "tests" / "link")
    findings = scan(repo, [*files, ("120000", "tests/link")], [str(tmp_path)])
    assert [f.split(": ")[0] for f in findings] == [
        "Makefile:2", "Makefile:2", ".ci/run:1", "tests/vz/conftest.py:1", "src/pkg/mod.py:1",
        "benchmarks/b.py:2", "scripts/s:1", "docs/x.md:1", "docs/x.md:1", "tests/link"]
    assert f"`{UP}{SIBLING}/DESIGN.md` climbs above the repository root" in findings[0]
    assert f"a symlink to {UP}{UP}elsewhere, outside the repository" in findings[-1]


def test_scan_allows_what_stays_inside(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    files = fake_repo(repo, {
        ".ci/run": 'cd "$(dirname "$0")/.."\nmake test\n',
        "tests/t.py": f"ROOT = Path({FILE}).resolve().parents[1]\nHERE = Path({FILE}).parent\n"
                      f"bad_name = '{UP}x'  # a template name fed as an attack: tests/{UP}x is still inside\n",
        "src/pkg/mod.py": f"ROOT = Path({FILE}).resolve().parents[2]\nif name in ('.', '..'): ...\n",
        "docs/x.md": f"[the benchmarks]({UP}benchmarks/README.md) and .../State.save\n",
    })
    os.symlink("t.py", repo / "tests" / "link")
    assert scan(repo, [*files, ("120000", "tests/link")], [str(tmp_path)]) == []


def test_a_checkout_in_tmp_may_name_temporary_paths(tmp_path: Path) -> None:
    """A clone in /tmp (as a CI runner may make it) does not turn every `/tmp/…` in the docs into a
    finding; a path through `shared` beside it still is one."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "x.md").write_text("mount /tmp/loop.img\n")
    (repo / "docs" / "y.md").write_text("read /tmp/sha" + "red/DESIGN.md\n")  # split: this file is scanned too
    files = [("100644", "docs/x.md"), ("100644", "docs/y.md")]
    assert scan(repo, files, ["/tmp"]) == ["docs/y.md:1: a path through a `shared` directory (beside the checkout, "
                                           "never in it)"]
