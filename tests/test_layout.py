"""Layout rules for the edgetl package, checked on its source's syntax trees (nothing is imported): module and
function sizes, no import cycle between edgetl modules, no private name imported across modules."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from textwrap import indent


PACKAGE = Path(__file__).resolve().parents[1] / "edgetl"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Module:
    name: str  # edgetl.x.y; a package is named by its __init__.py
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def where(self) -> str:
        return str(self.path.relative_to(PACKAGE.parent))


def _modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules


MODULES = _modules()


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside the body of an ``if TYPE_CHECKING:`` (its ``else`` runs)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _base(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` reads from."""
    if node.level == 0:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The edgetl module that importing ``name`` runs (the longest known prefix), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _import_edges(module: Module) -> dict[str, int]:
    """edgetl modules that ``module`` runs by importing, at any level, with the first line that does; not the
    imports under ``if TYPE_CHECKING:``, nor its own packages (always imported before it, so importing a
    submodule from one adds no edge; importing a name from one does)."""
    skipped = _type_checking_nodes(module.tree)
    ancestors = {module.name.rpartition(".")[0]} if module.is_package else set()
    parts = module.name.split(".")
    ancestors |= {".".join(parts[:i]) for i in range(1, len(parts))}
    edges: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        # importing a.b.c runs a, a.b and a.b.c
        while target and target.startswith("edgetl"):
            if target != module.name and target not in ancestors:
                edges.setdefault(target, line)
            target = _known(target.rpartition(".")[0])

    for node in ast.walk(module.tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    add(full, node.lineno)
                elif base in ancestors:  # a name from a package being imported: its __init__ must be done
                    edges.setdefault(base, node.lineno)
                else:
                    add(_known(base), node.lineno)
    return edges


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _long_functions(module: Module) -> list[str]:
    """Functions (methods and nested ones too) longer than MAX_FUNCTION_LINES, from ``def`` to the last line."""
    return [f"{module.where}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(module.tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(module: Module) -> list[str]:
    """``from .x import _y`` with ``x`` another module and ``_y`` not a module: a private name shared; and
    the same through a module imported whole (``from . import x`` ... ``x._y``)."""
    found, modules = [], {}
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = _base(module, node)
        if not base.startswith("edgetl") or base == module.name:
            continue
        for alias in node.names:
            if f"{base}.{alias.name}" in MODULES:
                modules[alias.asname or alias.name] = f"{base}.{alias.name}"
            elif _private(alias.name):
                found.append(f"{module.where}:{node.lineno} imports {alias.name} from {base}")
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr) \
                and modules.get(node.value.id, module.name) != module.name:
            found.append(f"{module.where}:{node.lineno} uses {node.attr} of {modules[node.value.id]}")
    return found


def test_the_package_is_found():
    assert {"edgetl", "edgetl.errors", "edgetl.runtime.bundle"} <= MODULES.keys()


def test_no_module_is_too_long():
    lengths = {m.where: len(m.path.read_text(encoding="utf-8").splitlines()) for m in MODULES.values()}
    long = sorted(f"{where}: {n} lines" for where, n in lengths.items() if n > MAX_MODULE_LINES)
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"


def test_no_function_is_too_long():
    long = sorted(line for m in MODULES.values() for line in _long_functions(m))
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycle():
    graph = {name: _import_edges(m) for name, m in MODULES.items()}
    cycles = [" <-> ".join(c) + " (" + ", ".join(f"{MODULES[a].where}:{graph[a][b]} -> {b}"
                                                 for a in c for b in sorted(graph[a]) if b in c) + ")"
              for c in _cycles(graph)]
    assert not cycles, "import cycles (module-level or in a function; TYPE_CHECKING blocks not counted):\n" + \
        "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    found = sorted(line for m in MODULES.values() for line in _private_imports(m))
    assert not found, "private names used outside their module (make them public with a docstring, or move " \
        "them to the module both sides use):\n" + "\n".join(found)


# The checks must be able to fail: each one on a tiny tree of its own.
def _fake(name: str, source: str, package: bool = False) -> Module:
    path = PACKAGE.joinpath(*name.split(".")[1:], "__init__.py" if package else "")
    if not package:
        path = path.with_suffix(".py")
    return Module(name, path, ast.parse(source))


def test_cycle_checks_see_function_level_and_package_imports(monkeypatch):
    fakes = {"edgetl.p": _fake("edgetl.p", "from .a import A\n", package=True),
             "edgetl.p.a": _fake("edgetl.p.a", "from . import VERSION\nfrom . import b\n"),
             "edgetl.p.b": _fake("edgetl.p.b", "def f():\n    from edgetl.q import x\n"),
             "edgetl.q": _fake("edgetl.q", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from edgetl.p.b import f\nimport edgetl.p.b as b\n")}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fakes)
    graph = {name: _import_edges(m) for name, m in fakes.items()}
    assert graph == {"edgetl.p": {"edgetl.p.a": 1}, "edgetl.p.a": {"edgetl.p": 1, "edgetl.p.b": 2},
                     "edgetl.p.b": {"edgetl.q": 2}, "edgetl.q": {"edgetl.p": 4, "edgetl.p.b": 4}}
    assert _cycles(graph) == [["edgetl.p", "edgetl.p.a", "edgetl.p.b", "edgetl.q"]]
    fakes["edgetl.q"] = _fake("edgetl.q", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from edgetl.p.b import f\n")
    assert _cycles({name: _import_edges(m) for name, m in fakes.items()}) == [["edgetl.p", "edgetl.p.a"]]


def test_private_import_check_allows_private_modules_only(monkeypatch):
    fakes = {"edgetl._io": _fake("edgetl._io", "def _raw(): ...\ndef write(): ...\n"),
             "edgetl.x": _fake("edgetl.x", "from ._io import write\nfrom . import _io\nfrom edgetl._io import _raw\n"
                                           "from .x import _self\n_io.write()\n_io._raw()\n")}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fakes)
    assert _private_imports(fakes["edgetl.x"]) == ["edgetl/x.py:3 imports _raw from edgetl._io",
                                                   "edgetl/x.py:6 uses _raw of edgetl._io"]


def test_function_length_counts_methods_and_nested_functions_from_def_to_last_line():
    body = "x = 1\n" * (MAX_FUNCTION_LINES - 2)
    source = f"def fits():\n{indent(body, '    ')}    return x\nclass C:\n    def method(self):\n" \
        f"{indent(body, ' ' * 8)}        def inner():\n            pass\n"
    assert _long_functions(_fake("edgetl.x", source)) == [f"edgetl/x.py:{MAX_FUNCTION_LINES + 2} method: "
                                                          f"{MAX_FUNCTION_LINES + 1} lines"]
