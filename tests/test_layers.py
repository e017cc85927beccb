"""The architecture, checked from the source alone (AST; no sigvirt module is imported).

Layers, lowest first; a module may import its own layer or lower ones, never a higher one:

  0  errors.py, runner.py, faults.py        what everything uses
  1  catalog/                               names, records, their states, the file store
  2  hosts/                                 the one libvirt boundary, regions, host chores
  3  context.py, regionadmin.py,            use cases
     galleries/, sharing/, versions/,
     guests/, rollouts/, lifecycle/, vagrant/
  4  cli/, __main__.py                      parsing, printing, exit codes

Plus: no import cycles (between modules, or between the packages of one layer); printing,
exiting and typer only in cli/; subprocesses only in runner.py; libvirt only in hosts/,
whose public API hands out sigvirt's own handles, never a libvirt object; a record's state
changes only through its transition table (records.py); no module over 600 lines.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

pytestmark = pytest.mark.offline

PACKAGE = Path(__file__).resolve().parents[1] / "sigvirt"
LAYERS: dict[str, int] = {
    "errors": 0,
    "runner": 0,
    "faults": 0,
    "catalog": 1,
    "hosts": 2,
    "context": 3,
    "regionadmin": 3,
    "galleries": 3,
    "sharing": 3,
    "versions": 3,
    "guests": 3,
    "rollouts": 3,
    "lifecycle": 3,
    "vagrant": 3,
    "cli": 4,
    "__main__": 4,
}
MAX_LINES = 600


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. sigvirt.hosts.hypervisor
    path: Path
    tree: ast.Module

    @property
    def part(self) -> str:
        """The first component under sigvirt/: its package, or the module itself."""
        return self.name.split(".")[1] if self.name != "sigvirt" else ""

    @property
    def layer(self) -> int:
        return LAYERS[self.part] if self.part else 0

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"


def _modules() -> list[Module]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(Module(".".join(parts), path, ast.parse(path.read_text(), str(path))))
    return out


MODULES = _modules()
BY_NAME = {m.name: m for m in MODULES}


def _imports(m: Module) -> Iterator[tuple[str, ast.AST]]:
    """Every sigvirt module `m` imports, anywhere in it (inside functions and TYPE_CHECKING
    blocks too: a lazy import is still a dependency)."""
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sigvirt"):
                    yield _known(alias.name), node
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("sigvirt"):
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield _known(full if full in BY_NAME else node.module), node


def _known(name: str) -> str:
    while name not in BY_NAME and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_every_part_of_the_package_has_a_layer() -> None:
    unknown = sorted({m.part for m in MODULES if m.part and m.part not in LAYERS})
    assert unknown == [], f"give these a layer in tests/test_layers.py: {unknown}"


def test_imports_point_down() -> None:
    bad = []
    for m in MODULES:
        for target, node in _imports(m):
            t = BY_NAME[target]
            if t.part and t.layer > m.layer:
                bad.append(f"{m.where(node)}: {m.name} (layer {m.layer}) imports {target} "
                           f"(layer {t.layer})")  # fmt: skip
    assert bad == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for nxt in sorted(graph.get(n, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles_between_modules() -> None:
    graph = {m.name: {t for t, _ in _imports(m) if t != m.name} for m in MODULES}
    # A package's __init__ is not a dependency of its modules' own imports of each other.
    assert _cycle(graph) is None


def test_no_import_cycles_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        for t, _ in _imports(m):
            other = BY_NAME[t].part
            if other and m.part and other != m.part:
                graph.setdefault(m.part, set()).add(other)
    assert _cycle(graph) is None


def _outside(part: str | tuple[str, ...]) -> list[Module]:
    parts = (part,) if isinstance(part, str) else part
    return [m for m in MODULES if m.part not in parts]


def _calls(m: Module) -> Iterator[tuple[str, ast.Call]]:
    """Calls by their dotted name as written (print, sys.exit, os.system, x.isActive)."""
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_printing_exiting_and_typer_only_in_cli() -> None:
    bad = []
    for m in _outside(("cli", "__main__")):
        for name, call in _calls(m):
            if name in ("print", "exit", "quit", "sys.exit", "os._exit", "breakpoint"):
                bad.append(f"{m.where(call)}: {name}()")
        for node in ast.walk(m.tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{m.where(node)}: imports {n}" for n in names if n.split(".")[0] in
                    ("typer", "click", "rich")]  # fmt: skip
    assert bad == []


def test_subprocesses_only_in_the_runner() -> None:
    spawners = {"os.system", "os.popen", "os.fork", "os.forkpty", "pty.spawn"}
    spawners |= {f"os.{n}" for n in dir(__import__("os")) if n.startswith(("spawn", "posix_sp"))}
    bad = []
    for m in _outside("runner"):
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]  # fmt: skip
                bad += [f"{m.where(node)}: imports {n}" for n in mods if n == "subprocess"]
        for name, call in _calls(m):
            if name in spawners or (name.startswith("os.exec") and m.part != "cli"):
                bad.append(f"{m.where(call)}: {name}()")
    assert bad == []


def _libvirt_methods() -> set[str]:
    """Method names of libvirt's classes that read as libvirt's own (camelCase): a call of
    one of these outside hosts/ means a raw libvirt object leaked."""
    names: set[str] = set()
    for cls in (libvirt.virConnect, libvirt.virDomain, libvirt.virStorageVol,
                libvirt.virStoragePool, libvirt.virStream, libvirt.virNetwork):  # fmt: skip
        for name, _ in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_") and name != name.lower():
                names.add(name)
    return names


def test_libvirt_only_behind_the_host_handle() -> None:
    methods = _libvirt_methods()
    bad = []
    for m in _outside("hosts"):
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Import) and any(a.name == "libvirt" for a in node.names):
                bad.append(f"{m.where(node)}: import libvirt")
            if isinstance(node, ast.ImportFrom) and node.module == "libvirt":
                bad.append(f"{m.where(node)}: from libvirt import")
            if isinstance(node, ast.Attribute):
                if node.attr in ("_conn", "_dom", "_vol", "conn"):
                    bad.append(f"{m.where(node)}: .{node.attr} (a raw libvirt object)")
                elif node.attr in methods:
                    bad.append(f"{m.where(node)}: .{node.attr}() is a libvirt method")
    assert bad == []


def test_the_host_handle_hands_out_no_libvirt_object() -> None:
    bad = []
    for m in MODULES:
        if m.part != "hosts":
            continue
        for node in ast.walk(m.tree):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                ret = ast.unparse(node.returns) if node.returns else ""
                if "libvirt." in ret:
                    bad.append(f"{m.where(node)}: {node.name}() returns {ret}")
    assert bad == []


def test_states_change_only_through_the_transition_tables() -> None:
    """`replace(record, state=...)` anywhere but records.py would skip the table."""
    bad = []
    for m in MODULES:
        if m.name == "sigvirt.catalog.records":
            continue
        for name, node in _calls(m):
            if name.endswith("replace") and any(k.arg == "state" for k in node.keywords):
                bad.append(f"{m.where(node)}: {name}(..., state=...)")
            if name == "object.__setattr__" and "'state'" in ast.unparse(node):
                bad.append(f"{m.where(node)}: object.__setattr__(..., 'state', ...)")
    assert bad == []


def test_no_bare_sigvirt_error_is_raised() -> None:
    """SigvirtError itself exits 1 (a bug): raise the class that says what went wrong."""
    bad = []
    for m in MODULES:
        for node in ast.walk(m.tree):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and ast.unparse(node.exc.func) == "SigvirtError"
            ):
                bad.append(m.where(node))
    assert bad == []


def test_modules_stay_readable() -> None:
    long = {m.name: n for m in MODULES if (n := len(m.path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_design_layout_matches_the_tree() -> None:
    """DESIGN.md's code layout names every package and top-level module, and nothing else."""
    text = (PACKAGE.parent / "DESIGN.md").read_text()
    section = text[text.index("## Code layout") :].split("\n## ", 1)[0]
    listed = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[2].startswith("`"):
            listed.add(cells[2].strip("`").rstrip("/").removesuffix(".py"))
    assert listed == {m.part for m in MODULES if m.part}
