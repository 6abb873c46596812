"""Import directions of the house map (STYLE.md): an `ast` walk over the package."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "shoes_vz"

# package → packages of ours it must not import
FORBIDDEN = {
    "core": {"server", "agent", "vm", "wire", "template", "plugin", "guest", "cli", "config"},
    "server": {"agent", "vm", "template", "plugin", "cli"},
    "agent": {"server", "vm.drivers", "plugin", "cli"},
    "vm": {"agent", "server", "wire", "plugin", "cli", "template"},
    "template": {"agent", "server", "wire", "plugin", "cli", "vm.drivers", "vm.process"},
    "plugin": {"agent", "server", "vm", "template", "cli"},
}
# of `vm`, templates use only the file-level pieces (clone, bundle paths/locks, identity files, leases)
ALLOWED_VM_FOR_TEMPLATE = {"vm.clone", "vm.bundle", "vm.digest", "vm.identity_files", "vm.leases"}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from shoes_vz.vm import digest` imports shoes_vz.vm.digest
                sub = f"{node.module}.{alias.name}"
                is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file()
                found.add(sub if is_module else node.module)
    return {m.removeprefix("shoes_vz.") for m in found if m.startswith("shoes_vz.")}


def test_import_directions() -> None:
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in (SRC / pkg).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            for mod in imports_of(path):
                if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                    # only vm/process.py may import the drivers
                    bad.append(f"{path.relative_to(SRC)} imports shoes_vz.{mod}")
    assert not bad, "\n".join(bad)


def test_template_uses_only_file_level_vm_modules() -> None:
    bad = [f"{p.relative_to(SRC)} imports shoes_vz.{m}" for p in (SRC / "template").rglob("*.py")
           for m in imports_of(p) if (m == "vm" or m.startswith("vm.")) and m not in ALLOWED_VM_FOR_TEMPLATE]
    assert not bad, "\n".join(bad)


def test_only_vm_process_imports_drivers() -> None:
    # (and the macOS doctor, which reads the vz driver's minimum macOS)
    bad = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
           if "vm/drivers" not in str(p) and p.name != "process.py" and "macos/" not in str(p)
           and any(m.startswith("vm.drivers") for m in imports_of(p))]
    assert not bad


def test_runner_agent_is_stdlib_only() -> None:
    path = SRC / "guest" / "runner_agent.py"
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots - set(sys.stdlib_module_names)


def test_pyobjc_only_in_vz_and_doctor() -> None:
    allowed = ("vm/drivers/vz", "macos/")
    bad = []
    for p in SRC.rglob("*.py"):
        rel = str(p.relative_to(SRC))
        mods = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
        if mods & {"objc", "Virtualization", "Foundation", "dispatch", "AppKit"} and not rel.startswith(allowed):
            bad.append(rel)
    assert not bad
