"""docs/ARCHITECTURE.md says no module of the package imports another in a cycle at import time
(function-level and TYPE_CHECKING imports excluded: they run after every module has loaded).
This reads the imports from the source and holds the docs to it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_time_targets(tree: ast.Module) -> list[str]:
    """Modules named by the imports that run when the module is imported: not in a function, not
    under `if TYPE_CHECKING:`."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports at import time (a.b.c also imports a.b and a)."""
    paths = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for target in _import_time_targets(ast.parse(path.read_text(encoding="utf-8"))):
            while target and target not in paths:  # `from pkg import name`: name may be an attribute
                target = target.rpartition(".")[0]
            parts = target.split(".") if target else []
            # importing a.b.c runs a and a.b first; a module's own packages are already loading
            targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - {name}
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it."""
    found, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :]
            if frozenset(cycle) not in done:
                done.add(frozenset(cycle))
                found.append([*cycle, node])
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*path, node])

    for start in sorted(graph):
        walk(start, [])
    return found


def test_no_module_imports_another_in_a_cycle():
    graph = import_graph(REPO / "ruslan_glowtts")
    assert len(graph) > 50 and "ruslan_glowtts.monitor.guard" in graph["ruslan_glowtts.training.trainer"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_a_package_and_ignores_lazy_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nfrom pkg.sub import b\nif TYPE_CHECKING:\n    from pkg import c\n"
    )
    (package / "sub" / "b.py").write_text("import pkg.a\nB = 1\ndef f():\n    from pkg import c\n")
    (package / "c.py").write_text("from pkg.a import x\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    # a -> sub (whose __init__ imports b) -> b -> a, and a -> b -> a; c is only imported lazily
    assert {frozenset(cycle) for cycle in cycles(graph)} == {
        frozenset({"pkg.a", "pkg.sub", "pkg.sub.b"}),
        frozenset({"pkg.a", "pkg.sub.b"}),
    }
