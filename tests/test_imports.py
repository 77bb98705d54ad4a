"""No import cycles in hpc_aevo/ or in the reference substrate.

A cycle makes the import order matter (a module half-initialised when its partner reads from it) and
ties two modules together so that neither can be read alone. The graph is read from the source (ast),
not by importing: every `import` and `from ... import`, at module level or inside a function, that
names a module of the package. `from pkg import name` where `name` is a submodule is an edge to it.
The substrate's files import each other by bare name (`import model`, run with cwd=substrate/).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_modules(root: Path) -> dict[str, Path]:
    """{dotted name: file} of every module of the package at `root` (a package is its __init__)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def flat_modules(root: Path) -> dict[str, Path]:
    """{bare name: file} of a directory of scripts that import each other by bare name."""
    return {path.stem: path for path in root.glob("*.py")}


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `module` imports (`from X import Y` gives X.Y), relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the modules of `modules` it imports}: each imported name goes to the longest module it names
    (X.Y to the submodule X.Y if there is one, else to X)."""
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module):
            parts = name.split(".")
            prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
            target = next((p for p in prefixes if p in modules), None)
            if target is not None and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), with one cycle through it."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [cycle_through(graph, component) for component in components]


def cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One edge chain start -> ... -> start inside a strongly connected component (shortest, by BFS)."""
    start = min(component)
    paths = {succ: [start, succ] for succ in sorted(graph[start]) if succ in component}
    frontier = list(paths)
    while start not in paths:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ in component and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    nxt.append(succ)
        frontier = nxt
    return paths[start]


def assert_no_cycles(modules: dict[str, Path]) -> None:
    found = cycles(import_graph(modules))
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_walker_finds_a_cycle_through_a_function_level_submodule_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import f\nimport os\n")
    graph = import_graph(package_modules(pkg))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_hpc_aevo_has_no_import_cycles():
    assert_no_cycles(package_modules(REPO / "hpc_aevo"))


def test_substrate_has_no_import_cycles():
    modules = flat_modules(REPO / "substrate")
    assert {"model", "hf_checkpoint", "train", "evaluate"} <= set(modules)
    assert_no_cycles(modules)
