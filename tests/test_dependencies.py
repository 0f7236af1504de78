"""The dependency picture of ``scripts/`` (docs/DESIGN.md): no import cycles, no upward imports, small modules.

Every ``import scripts...`` / ``from scripts... import`` statement is read from the source (also the ones
inside functions); importing ``scripts.a.b`` runs ``scripts/a/__init__.py`` first, so a module depends on
the packages above what it imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import BUNDLE_ROOT

#: from the bottom up: a module may import modules of lower layers and of its own package, never higher ones
LAYERS = [
    ["scripts.keys", "scripts.coords", "scripts.utils", "scripts.provenance", "scripts.measurements"],
    ["scripts.data"],
    ["scripts.heatmap", "scripts.trust", "scripts.networks", "scripts.bundle_configs"],
    ["scripts.writers"],
    ["scripts.checkpoints", "scripts.transforms", "scripts.losses", "scripts.metrics", "scripts.inferers"],
    ["scripts.handlers", "scripts.engines"],
    ["scripts.evaluation", "scripts.inference"],
]
MAX_LINES = 550


def _module_name(path: Path) -> str:
    parts = path.relative_to(BUNDLE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scripts":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "scripts"}
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it runs on import (what it imports and the packages above them)."""
    graph = {}
    for path in sorted((BUNDLE_ROOT / "scripts").rglob("*.py")):
        module = _module_name(path)
        deps = set()
        for name in _imports(path):
            parts = name.split(".")
            deps |= {".".join(parts[: i + 1]) for i in range(1, len(parts))}
        package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
        graph[module] = {d for d in deps if d != module and not package.startswith(d)}  # a package's own parents load first anyway
    return graph


def _layer(module: str) -> int:
    for index, group in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in group):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_dependencies.py: place it in LAYERS")


def _group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [module, dep]))
            if dep not in state:
                visit(dep, stack + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_no_upward_imports():
    wrong = []
    for module, deps in _graph().items():
        if module == "scripts":
            continue
        for dep in deps:
            same_package = _group(dep) == _group(module)
            if same_package and dep == _group(module) and module != dep:
                wrong.append(f"{module} imports its own package {dep} (import the submodule)")
            elif not same_package and _layer(dep) >= _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_modules_stay_small():
    long = {str(p.relative_to(BUNDLE_ROOT)): n for p in (BUNDLE_ROOT / "scripts").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
