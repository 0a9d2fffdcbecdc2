"""The core's shape: one slotted record, modules over it without a circle, and
work stealing's own record checked by ``validate_state``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import localsched.scheduler
from localsched.errors import InvalidTaskState
from localsched.scheduler.state import SchedulerState
from localsched.scheduler.stealing import WorkStealing
from tests.scheduler.factories import add_worker, submit, tick

CORE = Path(localsched.scheduler.__file__).parent


def _core_imports(path: Path) -> set[str]:
    """Core modules ``path`` imports at run time, function-level ones included."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        # ``if TYPE_CHECKING:`` blocks are for the type checker only.
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            type_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only or not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if module == "localsched.scheduler":
            found.update(alias.name for alias in node.names)
        elif module.startswith("localsched.scheduler."):
            found.add(module.rsplit(".", 1)[1])
    return found - {path.stem}


def test_core_modules_import_each_other_without_a_circle():
    graph = {path.stem: _core_imports(path) for path in CORE.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
    # The record sits above the behaviour, the behaviour never imports it.
    assert "state" not in set().union(
        *(deps for name, deps in graph.items() if name != "scheduler")
    )


def test_the_state_is_one_slotted_record():
    s = SchedulerState()

    # A misspelt field raises instead of quietly adding state nobody reads.
    with pytest.raises(AttributeError):
        s.total_ocupancy = 1.0  # type: ignore[attr-defined]
    assert not hasattr(s, "__dict__")
    assert isinstance(s.stealing, WorkStealing)
    assert not hasattr(s.stealing, "__dict__")


def test_validate_catches_a_steal_candidate_that_left_its_worker(state):
    add_worker(state, "w1")
    submit(state, ["a", "b", "c"])
    add_worker(state, "w2")
    tick(state, 1.0)
    w2 = state.workers["w2"]
    # A candidate recorded on a worker that does not run it (a stale record).
    state.stealing.stealable[w2] = {state.tasks["a"]: 0}

    with pytest.raises(InvalidTaskState, match="steal candidate on w2"):
        state.validate_state()

    del state.stealing.stealable[w2]  # the fixture validates again at teardown
