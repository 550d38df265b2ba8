"""Layering: no import cycles between grpokit's packages or modules, and the math layer imports nothing of ours.

Every import statement of src/grpokit is read with `ast` — function-local ones too, since a lazy import
is still a dependency (it only hides the cycle until the function runs); imports under
`if TYPE_CHECKING:` are left out, as they never run. A *package* is a top-level
subpackage or module of grpokit (`grpokit.guards`, `grpokit.report`); `grpokit/__init__.py` is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in (SRC / "grpokit").rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The grpokit modules `name` imports; `from package import submodule` counts as the submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                 for statement in node.body for inner in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "grpokit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "grpokit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return found - {name}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _witnesses(graph: dict[str, set[str]], cycle: list[str], key=lambda m: m) -> list[str]:
    members = set(cycle)
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if key(a) in members and key(b) in members and key(a) != key(b))


def test_no_cycle_between_packages():
    graph = _graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == "grpokit":
            continue
        packages.setdefault(_package(module), set()).update(
            _package(t) for t in targets if t != "grpokit" and _package(t) != _package(module))
    cycles = _cycles(packages)
    assert not cycles, "package cycles:\n" + "\n".join(
        f"{cycle}: {_witnesses(graph, cycle, _package)}" for cycle in cycles)


def test_no_cycle_between_modules():
    graph = _graph()
    # A package's __init__ re-exports its modules, and they import siblings through it: not a cycle of meaning.
    graph = {m: {t for t in targets if not _is_parent_package(t, m) and not _is_parent_package(m, t)}
             for m, targets in graph.items()}
    cycles = _cycles(graph)
    assert not cycles, "module cycles:\n" + "\n".join(f"{cycle}: {_witnesses(graph, cycle)}" for cycle in cycles)


def _is_parent_package(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_the_math_layer_imports_nothing_of_ours_and_nothing_imports_it_back_into_a_cycle():
    graph = _graph()
    outward = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith("grpokit.algorithms")
                     for t in targets if not t.startswith("grpokit.algorithms"))
    assert not outward, f"grpokit.algorithms must import only itself, torch and the standard library: {outward}"


def test_the_walk_sees_function_local_and_relative_imports():
    graph = _graph()
    # guards/callbacks.py imports grpokit.report inside a method; flow/build.py has `from .config import ...`.
    assert "grpokit.report" in graph["grpokit.guards.callbacks"]
    assert "grpokit.flow.config" in graph["grpokit.flow.build"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
