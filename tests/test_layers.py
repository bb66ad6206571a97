"""Unit: the data path reads top to bottom; no module imports a later step, none a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import exporter

# settings -> catalog -> plan -> execute -> snapshot -> exposition -> HTTP, step by step.
# A module may import only modules of earlier layers (or its own layer's earlier entries).
LAYERS: list[list[str]] = [
    ["errors", "inputs", "dsn", "settings", "redact", "thresholds", "logs", "logonce"],
    ["background"],
    ["spec", "compat", "catalog"],
    ["plan"],
    ["connections", "execute"],
    ["snapshot", "samples", "outcome", "info"],
    ["selfmetrics", "budget", "matview_refresh"],
    ["collect", "counters", "ttlcache"],
    ["exposition", "health", "healthpage", "constlabels"],
    ["target", "merged", "fleet", "probe", "appkeys", "reload"],
    ["webconfig", "runbook", "server", "httpserver"],
    ["report", "reference", "localpg", "demo", "cli", "__main__"],
]


def _imports(path: Path) -> set[str]:
    """Return the exporter modules a file imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("exporter.")
            )
    return found


def test_every_module_has_a_layer() -> None:
    package = Path(exporter.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} | {
        # Not a symlinked directory: a worktree links exporter/queries to ../queries.
        p.name
        for p in package.iterdir()
        if (p / "__init__.py").exists() and not p.is_symlink()
    }
    placed = {name for layer in LAYERS for name in layer}
    assert modules - {"__init__"} <= placed, "place new modules in LAYERS"


def test_no_module_imports_a_later_step() -> None:
    package = Path(exporter.__file__).parent
    order = [name for layer in LAYERS for name in layer]
    for position, name in enumerate(order):
        path = package / f"{name}.py"
        if not path.exists():
            path = package / name / "__init__.py"
        if not path.exists():
            continue
        files = [path] if path.name != "__init__.py" else list(path.parent.glob("*.py"))
        allowed = set(order[:position]) | {"__version__", name}
        for file in files:
            later = _imports(file) - allowed
            assert not later, f"{file.name} imports {sorted(later)}, a later step"
