"""Which build of the core is imported: compiled only when fresh, else pure.

``localsched.scheduler._loader`` decides at import (see its docstring); these
tests check the rule on fake packages, then on a copy of the real one.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import localsched
import localsched.scheduler
from localsched.scheduler import _loader, tasks

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
PACKAGE_DIR = Path(localsched.scheduler.__file__).parent
#: Set by ``.ci/run`` for the run that must use the compiled core.
EXPECT_COMPILED = "LOCALSCHED_EXPECT_COMPILED"


def _is_extension(module: object) -> bool:
    return str(getattr(module, "__file__", "")).endswith(SUFFIX)


def _pure_requested() -> bool:
    return os.environ.get(_loader.PURE_SWITCH, "") not in ("", "0")


def test_the_core_in_use_is_the_build_expected() -> None:
    # In CI the main run must not fall back to the pure core unnoticed (no
    # compiler, a failed build, a stale stamp); the second run asks for it.
    if _pure_requested():
        assert not localsched.scheduler.COMPILED
    elif os.environ.get(EXPECT_COMPILED):
        assert localsched.scheduler.COMPILED, localsched.scheduler.COMPILED_REASON
    assert _is_extension(tasks) is localsched.scheduler.COMPILED


def _fake_package(root: Path, modules: dict[str, str]) -> Path:
    """``fakecore``: sources, a bogus extension per module, a fresh stamp."""
    package = root / "fakecore"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        "from localsched.scheduler import _loader\n"
        "COMPILED, REASON = _loader.select(__name__, Path(__file__).parent)\n"
    )
    extensions = []
    for name, source in modules.items():
        (package / f"{name}.py").write_text(source)
        # Not a loadable library: importing it instead of the .py fails.
        (package / f"{name}{SUFFIX}").write_text("not an extension")
        extensions.append(f"{name}{SUFFIX}")
    _write_stamp(package, extensions)
    return package


def _write_stamp(package: Path, extensions: list[str]) -> None:
    stamp = {"extensions": extensions, "sources": _loader.source_hashes(package)}
    (package / _loader.STAMP).write_text(json.dumps(stamp))


def test_a_fresh_build_is_used(tmp_path: Path) -> None:
    package = _fake_package(tmp_path, {"a": "X = 1\n", "b": "Y = 2\n"})
    assert _loader.check(package, pure_requested=False) == (
        True,
        "compiled core, built from these sources",
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: (p / "a.py").write_text("X = 2\n"), "a.py changed since built"),
        (lambda p: (p / "c.py").write_text("Z = 3\n"), "c.py changed since built"),
        (lambda p: (p / "b.py").unlink(), "b.py changed since built"),
        (lambda p: (p / f"a{SUFFIX}").unlink(), "extensions differ from the stamp"),
        (lambda p: (p / _loader.STAMP).unlink(), "no valid _compiled.json"),
        (lambda p: (p / _loader.STAMP).write_text("{"), "no valid _compiled.json"),
    ],
    ids=["edited", "added", "removed", "extension-missing", "no-stamp", "bad-stamp"],
)
def test_any_change_since_the_build_makes_it_stale(
    tmp_path: Path, change: Callable[[Path], object], reason: str
) -> None:
    package = _fake_package(tmp_path, {"a": "X = 1\n", "b": "Y = 2\n"})
    change(package)
    compiled, why = _loader.check(package, pure_requested=False)
    assert not compiled
    assert why.startswith("stale compiled core")
    assert reason in why


def test_the_switch_and_a_missing_build_give_the_pure_core(tmp_path: Path) -> None:
    package = _fake_package(tmp_path, {"a": "X = 1\n"})
    assert _loader.check(package, pure_requested=True) == (
        False,
        f"{_loader.PURE_SWITCH} is set",
    )
    for path in package.glob(f"*{SUFFIX}"):
        path.unlink()
    assert _loader.check(package, pure_requested=False) == (
        False,
        "no compiled core installed",
    )


def _run(code: str, path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != _loader.PURE_SWITCH}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(path), str(Path(localsched.__file__).parents[1])]
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=path,  # ``-c`` puts the current directory first on sys.path
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_stale_build_imports_every_module_from_its_source(tmp_path: Path) -> None:
    # The bogus extensions would fail to load: the .py files must be imported.
    package = _fake_package(tmp_path, {"a": "X = 1\n", "b": "Y = 2\n"})
    (package / "a.py").write_text("X = 10\n")
    done = _run(
        "import fakecore, fakecore.a, fakecore.b\n"
        "print(fakecore.COMPILED, fakecore.a.X, fakecore.a.__file__.endswith('.py'),"
        " fakecore.b.__file__.endswith('.py'))",
        tmp_path,
    )
    assert done.stdout.split() == ["False", "10", "True", "True"]
    assert "stale compiled core: a.py changed since built" in done.stderr
    assert "python -m pip install -e ." in done.stderr


@pytest.mark.skipif(
    not _loader.check(PACKAGE_DIR, pure_requested=False)[0],
    reason="no fresh compiled core here (none built, or sources edited since)",
)
@pytest.mark.timeout(120)
def test_editing_a_compiled_module_falls_back_to_the_pure_core(
    tmp_path: Path,
) -> None:
    # A copy of the installed package, compiled modules and stamp included.
    copy = tmp_path / "localsched"
    shutil.copytree(Path(localsched.__file__).parent, copy)
    probe = (
        "import localsched, localsched.scheduler as s, localsched.scheduler.tasks as t,"
        " localsched.scheduler.engine as e\n"
        "print(s.COMPILED, t.__file__.endswith('.py'), e.__file__.endswith('.py'),"
        f" localsched.__file__.startswith({str(tmp_path)!r}))"
    )
    fresh = _run(probe, tmp_path)
    assert fresh.stdout.split() == ["True", "False", "False", "True"]
    switched = _run(probe, tmp_path, **{_loader.PURE_SWITCH: "1"})
    assert switched.stdout.split() == ["False", "True", "True", "True"]
    tasks_py = copy / "scheduler" / "tasks.py"
    tasks_py.write_text(tasks_py.read_text() + "\n# edited\n")
    stale = _run(probe, tmp_path)
    # All pure, not only the edited module: compiled modules call each other.
    assert stale.stdout.split() == ["False", "True", "True", "True"]
    assert "tasks.py changed since built" in stale.stderr
