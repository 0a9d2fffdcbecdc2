"""The package's dependency rule holds (docs/architecture.md, "Layout").

import-linter's contracts (``lint-imports`` in CI) state the layers; this test
walks every import statement itself, function-level ones included (a lazy
import is still a dependency), and fails on any circle between packages.
Imports under ``if TYPE_CHECKING:`` never run and are not counted.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "localsched"

#: Imports of a layer above, each with its reason; the same list is in the
#: import-linter contract's ``ignore_imports``.
ALLOWED_UPWARD = {
    # dask's Cluster.get_client(): the cluster makes the client asked of it.
    ("localsched.deploy.local", "localsched.client.client"),
    # An actor task's result is the client's Actor handle, made in the worker
    # (only when a task is an actor: a worker imports it then, not at start).
    ("localsched.worker.actors", "localsched.client.actor"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """The package a module belongs to (``localsched.client``), or the module
    itself for one at the top (``localsched.errors``)."""
    parts = module.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def package_imports() -> dict[tuple[str, str], set[str]]:
    """(importing unit, imported unit) -> the module-level edges behind it."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                subs = [s for s in subs if s in modules]
                whole = len(subs) == len(node.names)
                targets = subs if whole else [node.module, *subs]
            else:
                continue
            for target in targets:
                if (name, target) in ALLOWED_UPWARD:
                    continue
                if target in modules and _unit(target) != _unit(name):
                    edges[_unit(name), _unit(target)].add(f"{name} -> {target}")
    return edges


def _circles(edges: dict[tuple[str, str], set[str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(unit: str) -> None:  # Tarjan's strongly connected components
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for other in graph[unit]:
            if other not in index:
                visit(other)
                low[unit] = min(low[unit], low[other])
            elif other in stack:
                low[unit] = min(low[unit], index[other])
        if low[unit] == index[unit]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == unit:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for unit in list(graph):
        if unit not in index:
            visit(unit)
    return found


def test_no_import_circle_between_packages() -> None:
    edges = package_imports()
    circles = _circles(edges)
    detail = {
        " <-> ".join(c): sorted(
            e for (s, t), es in edges.items() if s in c and t in c for e in es
        )
        for c in circles
    }
    assert not circles, detail


def test_the_walk_sees_a_function_level_import_circle() -> None:
    edges = {("a", "b"): {"a.x -> b.y"}, ("b", "a"): {"b.f -> a.z (in a function)"}}
    assert _circles(edges) == [["a", "b"]]
    assert _circles({("a", "b"): {"a.x -> b.y"}}) == []


def test_the_worker_imports_neither_client_nor_runtime_nor_core() -> None:
    edges = package_imports()
    forbidden = {"localsched.client", "localsched.runtime", "localsched.scheduler"}
    assert not [
        e for (s, t), e in edges.items() if s == "localsched.worker" and t in forbidden
    ]


@pytest.mark.timeout(120)
def test_import_linter_contracts_are_kept() -> None:
    linter = shutil.which("lint-imports")
    if linter is None:
        pytest.skip("import-linter is not installed (it is in the test extra)")
    done = subprocess.run([linter], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
