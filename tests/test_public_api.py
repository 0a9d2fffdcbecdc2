"""The public surface: exactly the intended names, each documented, modules small."""

from __future__ import annotations

import inspect
from pathlib import Path

import localsched

PUBLIC = {
    "Adaptive",
    "Client",
    "Future",
    "FutureCancelledError",
    "LocalCluster",
    "as_completed",
    "default_client",
    "futures_of",
    "get_task_stream",
    "progress",
    "TimeoutError",
    "wait",
    "KilledWorker",
    "NoValidWorkerError",
    "Scheduler",
    "SchedulerPlugin",
    "WorkerPlugin",
    "fire_and_forget",
    "get_client",
    "get_worker",
    "rejoin",
    "secede",
    "worker_client",
    "Event",
    "Lock",
    "Queue",
    "Semaphore",
    "Variable",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(localsched.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(localsched, name) is not None


def test_every_public_name_has_a_docstring() -> None:
    for name in localsched.__all__:
        obj = getattr(localsched, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_plugin_hooks_have_dasks_signatures() -> None:
    hook = inspect.signature(localsched.SchedulerPlugin.transition)
    assert list(hook.parameters) == [
        "self",
        "key",
        "start",
        "finish",
        "args",
        "stimulus_id",
        "kwargs",
    ]
    assert hook.parameters["stimulus_id"].kind is inspect.Parameter.KEYWORD_ONLY
    add_worker = inspect.signature(localsched.SchedulerPlugin.add_worker)
    assert list(add_worker.parameters) == ["self", "scheduler", "worker"]
    assert inspect.iscoroutinefunction(localsched.SchedulerPlugin.start)
    assert inspect.iscoroutinefunction(localsched.SchedulerPlugin.close)


def test_killed_worker_keeps_dasks_arguments() -> None:
    error = localsched.KilledWorker("x", "local://1/0", 3)
    assert (error.task, error.last_worker, error.allowed_failures) == (
        "x",
        "local://1/0",
        3,
    )
    assert "'x'" in str(error)
    assert "4 different workers" in str(error)


def test_no_module_passes_the_size_limit() -> None:
    root = Path(localsched.__file__).parent
    too_big = {
        str(path.relative_to(root)): n
        for path in root.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 1000
    }
    assert not too_big, too_big


def test_core_imports_no_io_modules() -> None:
    """The sans-IO rule: the core modules import no threads, pipes, clocks."""
    root = Path(localsched.__file__).parent / "scheduler"
    forbidden = ("threading", "multiprocessing", "time", "socket", "pickle", "os")
    core = [
        "tasks",
        "events",
        "commands",
        "state",
        "transitions",
        "stimuli",
        "placement",
        "policies",
        "validate",
        "heapset",
    ]
    for name in core:
        source = (root / f"{name}.py").read_text()
        for module in forbidden:
            assert f"\nimport {module}\n" not in source, (name, module)
            assert f"\nfrom {module} import" not in source, (name, module)


def test_every_public_name_is_documented_in_docs_api() -> None:
    api = (Path(localsched.__file__).parents[1] / "docs" / "api.md").read_text()
    missing = [name for name in localsched.__all__ if f"`{name}" not in api]
    assert not missing, f"add to docs/api.md: {missing}"


def test_readme_links_to_existing_docs_and_images() -> None:
    root = Path(localsched.__file__).parents[1]
    readme = (root / "README.md").read_text()
    written_here = ["quickstart", "api", "migrating", "plugins", "architecture"]
    for page in written_here:
        assert f"(docs/{page}.md)" in readme
        assert (root / "docs" / f"{page}.md").is_file()
    for image in ("progress-terminal.png", "notebook.png"):
        assert (root / "docs" / "images" / image).is_file()


def test_rich_loads_only_when_something_is_drawn() -> None:
    import subprocess
    import sys

    code = (
        "import sys, localsched; localsched.Client; localsched.progress; "
        "print('rich' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_every_declared_dependency_is_imported() -> None:
    """A dependency that nothing imports only costs installs (loky was one:
    see "Dependencies" in docs/architecture.md)."""
    import ast
    import importlib.metadata
    import re
    import tomllib

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    root = Path(localsched.__file__).parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {normal(re.split(r"[<>=!~\[; ]", d)[0]) for d in project["dependencies"]}
    imported: set[str] = set()
    for path in (root / "localsched").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.partition(".")[0])
    distributions = importlib.metadata.packages_distributions()
    used = {normal(d) for module in imported for d in distributions.get(module, ())}
    assert declared, "no dependencies read from pyproject.toml"
    assert declared - used == set()
