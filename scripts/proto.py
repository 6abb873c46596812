"""The committed protobuf/gRPC code, made from proto/ with the grpcio-tools pyproject.toml pins.

    python scripts/proto.py write            # `make proto`: regenerate src/shoes_vz/wire/*_pb2*
    python scripts/proto.py check            # `make proto-check`: exit 1 naming every stale file
    python scripts/proto.py check --root DIR # the same for another copy of the repository

Both generate into a temporary directory first, so `check` never touches the tree and `write` replaces
the committed files only with a complete set (and removes generated files whose .proto is gone).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = "*_pb2*.py*"  # _pb2.py, _pb2.pyi, _pb2_grpc.py


class ProtoError(Exception):
    pass


def pinned_tools(root: Path) -> str:
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"grpcio-tools==(\S+)", d.replace(" ", "")))]
    if not pins:
        raise ProtoError("pyproject.toml does not pin grpcio-tools (dev extra: grpcio-tools==X.Y.Z)")
    return pins[0]


def check_tools(root: Path) -> None:
    """Another protoc version writes other bytes; comparing them would only report noise."""
    want = pinned_tools(root)
    try:
        have = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        raise ProtoError(f"grpcio-tools is not installed: run scripts/setup (pinned: {want})") from None
    if have != want:
        raise ProtoError(f"grpcio-tools {have} is installed but pyproject.toml pins {want}: run scripts/setup")


def generate(root: Path, out: Path) -> dict[Path, bytes]:
    """{path relative to src/: bytes} of everything protoc makes from root/proto."""
    protos = sorted(str(p.relative_to(root / "proto")) for p in (root / "proto").rglob("*.proto"))
    if not protos:
        raise ProtoError(f"no .proto files under {root / 'proto'}")
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", f"--python_out={out}", f"--pyi_out={out}",
         f"--grpc_python_out={out}", *protos],
        cwd=root, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise ProtoError(f"protoc failed: {done.stderr.strip()}")
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def committed(root: Path, generated: dict[Path, bytes]) -> set[Path]:
    """Generated-looking files now in src/, in every directory protoc writes to."""
    dirs = {rel.parent for rel in generated}
    return {p.relative_to(root / "src") for d in dirs for p in (root / "src" / d).glob(GENERATED)}


def stale(root: Path) -> list[str]:
    """One line per committed file that differs from, is missing from or is not in protoc's output."""
    check_tools(root)
    with tempfile.TemporaryDirectory(prefix="shoes-vz-proto-") as tmp:
        fresh = generate(root, Path(tmp))
    problems = []
    for rel, data in fresh.items():
        ours = root / "src" / rel
        if not ours.is_file():
            problems.append(f"src/{rel}: missing")
        elif ours.read_bytes() != data:
            problems.append(f"src/{rel}: differs")
    problems += [f"src/{rel}: no .proto makes it" for rel in sorted(committed(root, fresh) - set(fresh))]
    return problems


def write(root: Path) -> list[str]:
    check_tools(root)
    with tempfile.TemporaryDirectory(prefix="shoes-vz-proto-") as tmp:
        fresh = generate(root, Path(tmp))
        for rel in sorted(committed(root, fresh) - set(fresh)):
            (root / "src" / rel).unlink()
        for rel in fresh:
            (root / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / rel, root / "src" / rel)
    return [f"src/{rel}" for rel in fresh]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("write", "check"))
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.action == "write":
            print(f"proto: wrote {len(write(root))} files")
            return 0
        problems = stale(root)
    except ProtoError as e:
        print(f"proto {args.action}: {e}", file=sys.stderr)
        return 1
    if problems:
        print("proto-check: the committed generated code is stale, run `make proto`:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("proto-check: the committed generated code is what proto/ makes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
