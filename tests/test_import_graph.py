"""The medseg package has no import circles.

The graph is read from the source with `ast`: every `import` and `from ... import` anywhere in a module
(top level, inside functions, under `if TYPE_CHECKING:`) is an edge, because a circle hidden in a
function is still two modules that each need the other. `from a.b import c` points at the module
a.b.c when there is one, else at a.b (the package's __init__ when a.b is a package).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "medseg"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package."""
    out: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of a dotted name that is a module of the package (or None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    names = set(files)
    return {module: imported_modules(module, path, names) for module, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative, so a deep graph cannot hit the recursion limit
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
                continue
            if child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert len(graph) > 50 and sum(len(v) for v in graph.values()) > 100  # the graph really was read
    cycles = find_cycles(graph)
    shown = ["; ".join(" -> ".join(edge) for edge in _edges_within(graph, c)) for c in cycles]
    assert not cycles, "import circles (break them by moving the shared piece):\n" + "\n".join(shown)


def _edges_within(graph: dict[str, set[str]], component: list[str]) -> list[tuple[str, str]]:
    members = set(component)
    return [(a, b) for a in component for b in sorted(graph[a]) if b in members]


def test_the_cycle_finder_sees_a_circle_hidden_in_a_function(tmp_path):
    """The detector itself: a circle through a function-level import, and one through `from pkg import mod`."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from medseg.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from medseg import a\n    return a\nthing = 1\n")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("import medseg.sub.c\n")
    (pkg / "e.py").write_text("from medseg.sub import c\n")  # into a circle, not part of it
    graph = import_graph(tmp_path)
    assert graph["medseg.b"] == {"medseg.a"}
    assert find_cycles(graph) == [["medseg.a", "medseg.b"], ["medseg.sub.c", "medseg.sub.d"]]
