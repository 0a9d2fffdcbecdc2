"""The public surface: exactly the intended names, each documented, modules small."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import localsched

PUBLIC = {
    "Actor",
    "ActorFuture",
    "Adaptive",
    "CancelledError",
    "local_client",
    "BaseActorFuture",
    "Client",
    "Future",
    "FutureCancelledError",
    "LocalCluster",
    "as_completed",
    "default_client",
    "futures_of",
    "get_task_metadata",
    "get_task_stream",
    "performance_report",
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
    "print",
    "warn",
    "Event",
    "Lock",
    "Queue",
    "Reschedule",
    "MultiLock",
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


#: Packages whose names are imported on first use (PEP 562 ``__getattr__``).
LAZY_PACKAGES = ["localsched", "localsched.diagnostics"]


def test_no_submodule_is_named_like_a_lazily_exported_name() -> None:
    """Importing ``pkg.name`` binds the submodule as ``pkg.name``, which would
    then shadow the function or class that ``from pkg import name`` promises."""
    for package_name in LAZY_PACKAGES:
        package = importlib.import_module(package_name)
        submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
        assert not submodules & set(package.__all__), package_name


# Run in a fresh interpreter: whether ``from pkg import name`` gives the module or
# the function depended on what had been imported before, which a test process
# that has imported everything cannot show.
_IMPORT_EACH_NAME = """
import importlib, json, pkgutil, sys
package_name, order = sys.argv[1], sys.argv[2]
package = importlib.import_module(package_name)
if order == "submodules-first":
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "__main__":  # running it would start the command line
            importlib.import_module(f"{package_name}.{info.name}")
found = {}
for name in package.__all__:
    namespace = {}
    exec(f"from {package_name} import {name}", namespace)
    value = namespace[name]
    found[name] = [type(value).__name__, getattr(value, "__name__", None)]
print(json.dumps(found))
"""


@pytest.mark.parametrize("order", ["fresh", "submodules-first"])
@pytest.mark.parametrize("package_name", LAZY_PACKAGES)
def test_documented_imports_give_the_function_or_class_whatever_was_imported_first(
    package_name: str, order: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_NAME, package_name, order],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    ).stdout
    found = json.loads(out)
    assert set(found) == set(importlib.import_module(package_name).__all__)
    wrong = {
        name: kind
        for name, (kind, qualname) in found.items()
        if kind not in ("function", "type", "ABCMeta") or qualname != name
    }
    assert not wrong, f"{package_name}: not the documented function or class: {wrong}"


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
