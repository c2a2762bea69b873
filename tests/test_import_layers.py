"""Dependencies point one way: no module imports one that imports it back, and the packages form layers.

The import graph is read from the source with ``ast`` (every import, also those inside functions, which run
later but still tie the modules together; imports under ``if TYPE_CHECKING:`` are left out, they never run).
Cycles broken for issue 11 and kept broken here: the study loop -> selection -> report -> selection chain, the
evaluators' registry <-> implementations, config <-> merging <-> weights, config <-> study (the samplers).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "evaluators")

# Known, not yet broken: the execution backends run the study's worker (search.study.trial) and load selection's
# mixtures, while the loop and selection submit jobs to them. Any other package cycle fails the test.
KNOWN_PACKAGE_CYCLE = {"search.backends", "search.study", "search.selection"}


def _modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                stack.extend(child.orelse)  # type: ignore[attr-defined]
                continue
            if isinstance(child, ast.Import):
                yield from (a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")[: len(module.split(".")) - child.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                yield base
                yield from (f"{base}.{a.name}" for a in child.names)
            stack.append(child)


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (a ``from pkg import name`` counts the submodule when
    ``name`` is one, else ``pkg``)."""
    modules = _modules(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name in _imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # a package's own __init__: no edge
                graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def package_of(module: str) -> str:
    """``search.study.loop`` -> ``search.study``; ``evaluators.lm_eval`` -> ``evaluators``; ``search.cli`` stays."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "search" else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(package_of(module), set()).update(package_of(t) for t in targets
                                                         if package_of(t) != package_of(module))
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(import_graph(ROOT, PACKAGES)) == []


def test_packages_depend_one_way() -> None:
    found = cycles(package_graph(import_graph(ROOT, PACKAGES)))
    assert all(c <= KNOWN_PACKAGE_CYCLE for c in found), found
    named = ({"search.study", "search.selection"}, {"search.selection", "search.report"},
             {"search.config", "search.merging"}, {"search.merging", "search.weights"},
             {"search.config", "search.weights"}, {"search.config", "search.study"})
    for pair in named:
        assert not any(pair <= c for c in found if not pair <= KNOWN_PACKAGE_CYCLE), pair


def test_the_check_finds_a_cycle(tmp_path: Path) -> None:
    """The check itself can fail: a lazy import back (inside a function) is a cycle; a TYPE_CHECKING one is not."""
    pkg = tmp_path / "demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("def build():\n    from demo.impl import Impl\n    return Impl()\n")
    (pkg / "impl.py").write_text("from demo.registry import build\nclass Impl: ...\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from demo.other import X\n")
    (pkg / "other.py").write_text("from demo import typed\n")
    assert cycles(import_graph(tmp_path, ["demo"])) == [{"demo.registry", "demo.impl"}]
