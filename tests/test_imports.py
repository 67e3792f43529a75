"""The package's modules import each other without a circle, counting every import (at
module level, under TYPE_CHECKING, or inside a function): the modules below the gateway ask
for the services they use instead of importing the gateway that assembles them."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "fleetgate"


def module_names() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The package's modules `tree` imports (``from pkg import sub`` is the submodule)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found |= subs
            if len(subs) < len(node.names) and node.module in modules:
                found.add(node.module)
    return found


def test_no_module_imports_itself_round_a_circle() -> None:
    modules = module_names()
    graph = {name: imported(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}
    assert len(graph) > 100 and graph["fleetgate.gateway"], "the graph is read"
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        raise AssertionError(f"an import circle: {' → '.join(e.args[1])}") from e
