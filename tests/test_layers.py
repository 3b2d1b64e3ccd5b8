"""The architecture's rule (docs/architecture.md): every import points down, with no circles."""

from __future__ import annotations

import ast
from pathlib import Path

import flipd

PACKAGE = Path(flipd.__file__).resolve().parent

#: Layers from the bottom up; a module may import its own layer and the ones below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("leaf", {"flipd._version", "flipd.runs.files", "flipd.devices", "flipd.metrics", "flipd.progress", "flipd.pil_images"}),
    ("core", {"flipd.schedules", "flipd.parameterization", "flipd.trace", "flipd.noise", "flipd.knee",
              "flipd.plateau", "flipd.calibrated", "flipd.reliability", "flipd.analytic", "flipd.models.base", "flipd.results",
              "flipd.checks", "flipd.estimator"}),
    ("components", {"flipd.models", "flipd.datasets", "flipd.baselines", "flipd.methods", "flipd.runs", "flipd.train",
                    "flipd.recipes"}),
    ("jobs", {"flipd.jobs", "flipd.plots", "flipd.sklearn"}),
    ("shell", {"flipd", "flipd.cli", "flipd.bench", "flipd.demo", "flipd.__main__"}),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def import_graph() -> dict[str, set[str]]:
    """flipd module -> flipd modules it imports (at the top or inside functions)."""
    modules = _modules()

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                if base.split(".")[0] != "flipd":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else resolve(base))
            elif isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names if alias.name.split(".")[0] == "flipd"}
        graph[name] = targets - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer(module: str) -> int:
    best, depth = None, -1
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = level, prefix.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_layers.py; add it"
    return best


def test_there_are_no_import_circles():
    assert _cycles(import_graph()) == []


def test_every_import_points_down():
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in import_graph().items() for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
