"""The package's shape stays untied: no import cycle, no module reaching into another's privates.

Every import counts, at module level, inside functions and under `TYPE_CHECKING`: a cycle that
only type-checking sees still ties two modules together for the next reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest_llm_budget

ROOT = Path(pytest_llm_budget.__file__).parent
PACKAGE = ROOT.name


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _owner(dotted: str) -> str | None:
    """The package module a dotted name lives in (the longest known prefix)."""
    while dotted:
        if dotted in MODULES:
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if MODULES[module].name != "__init__.py":
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _imports(module: str) -> Iterator[tuple[str, str | None, ast.AST]]:
    """(imported package module, name taken from it or None, node) for every import."""
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                owner = _owner(alias.name)
                if owner:
                    yield owner, None, node
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    yield submodule, None, node
                elif (owner := _owner(base)) is not None:
                    yield owner, alias.name, node


def _graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (its own parent packages left out)."""
    return {
        module: {
            target
            for target, _, _ in _imports(module)
            if target != module and not module.startswith(f"{target}.")
        }
        for module in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                    found.append(sorted(component))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_graph_sees_function_level_and_type_checking_imports() -> None:
    graph = _graph()
    # routing.clients imports the registry only inside a function; watch types its Limiter
    # under TYPE_CHECKING only
    assert "pytest_llm_budget.providers.registry" in graph["pytest_llm_budget.routing.clients"]
    assert "pytest_llm_budget.limiting.limiter" in graph["pytest_llm_budget.limiting.watch"]


def test_no_module_imports_another_modules_private_name() -> None:
    offences = [
        f"{module}: from {owner} import {name}"
        for module in MODULES
        for owner, name, _ in _imports(module)
        if name is not None and _private(name) and owner != module
    ]
    assert offences == []


def _module_aliases(module: str) -> dict[str, str]:
    """Local names a module binds to other package modules (`from pkg.routing import intercept`)."""
    bound: dict[str, str] = {}
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    bound[alias.asname] = alias.name
    return {local: target for local, target in bound.items() if target != module}


def test_no_module_reads_another_modules_private_attribute() -> None:
    offences = [
        f"{module}: {node.value.id}.{node.attr}"
        for module in MODULES
        for aliases in [_module_aliases(module)]
        for node in ast.walk(TREES[module])
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and _private(node.attr)
    ]
    assert offences == []
