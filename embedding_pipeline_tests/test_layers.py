"""The package's layering, checked from the source: data flows one way and nothing imports upward.

Imports inside functions count too: a function-level import is still a dependency, and hiding a
cycle behind one is exactly what this test exists to stop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import embedding_pipeline

ROOT = Path(embedding_pipeline.__file__).parent
# Lowest first. A module may import modules of its own layer and of layers before it.
LAYERS = [
    ["errors", "spaces.model"],  # the shared vocabulary imports nothing of ours but errors
    ["config"],
    ["db"],
    ["spaces"],
    ["providers"],
    ["read_path"],
    ["embeddings"],
    ["evaluation", "drift", "backup"],
    ["plan", "cutover"],
    ["local"],
    # The two thin layers and the code location; the CLI may load the code location (the demo's
    # Dagster runs), never the other way round inside the core.
    ["defs", "cli", "definitions"],
]


def _layer(module: str) -> int:
    """Layer of ``embedding_pipeline.<module>``: the longest matching prefix wins (spaces.model before spaces)."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found is not None, f"embedding_pipeline.{module} is in no layer: add its package to LAYERS"
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedding_pipeline."):
            found.add(node.module.removeprefix("embedding_pipeline."))
            found.update(f"{node.module.removeprefix('embedding_pipeline.')}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("embedding_pipeline.") for a in node.names
                         if a.name.startswith("embedding_pipeline."))
    return found


def test_no_module_imports_a_layer_above_it():
    """config -> db -> spaces -> providers -> read_path -> embeddings -> eval/drift/backup -> plan/cutover."""
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        for target in sorted(_imports(path) & set(modules)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_no_import_cycle():
    """No two modules reach each other, counting imports inside functions."""
    modules = _modules()
    # A package's own name in ``from pkg import sub`` is not an edge to itself.
    graph = {name: (_imports(path) & set(modules)) - {name} for name, path in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return seen

    cycles = sorted(name for name in graph if name in reach(name))
    assert cycles == []
