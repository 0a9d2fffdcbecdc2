"""Build: the scheduler core compiled with mypyc when it can be, else pure Python.

The metadata is in ``pyproject.toml``; this file only adds the compiled core
(docs/architecture.md, "How the core is built"). The modules in ``COMPILED``
are compiled together with mypyc into one shared library
(``localsched/scheduler/_core__mypyc``) and one small extension per module,
next to their sources. A stamp, ``localsched/scheduler/_compiled.json``, records
the extensions built and the hash of every source of the package; at import,
``localsched.scheduler._loader`` uses the compiled modules only if every one of
them is present and no source changed, and the pure modules otherwise.

Compiling is optional: with ``LOCALSCHED_PURE_PYTHON=1`` nothing is compiled,
and if mypyc or the C compiler fails the build goes on without the extensions
(pure Python, with a message in pip's verbose log).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PACKAGE = "localsched.scheduler"
SOURCE_DIR = Path("localsched", "scheduler")
#: The compiled modules of the core. Left out: ``commands`` and ``events``
#: (mypyc 2.4 cannot build keyword-only slotted dataclasses), ``transition_log``
#: and ``computations`` (deque subclasses, which a native class cannot be), the
#: ``scheduler`` facade (off the per-task path; mypyc 2.4 also fails on its
#: keyword-only signatures) and the package's ``__init__`` and ``_loader`` (they
#: choose between the two builds).
COMPILED = (
    "builders",
    "clients",
    "engine",
    "graphs",
    "heapset",
    "placement",
    "policies",
    "state",
    "stealing",
    "stimuli",
    "tasks",
    "transitions",
    "validate",
)
#: The shared library's module name (mypyc's ``group_name`` + ``__mypyc``).
GROUP = f"{PACKAGE}._core"
STAMP = "_compiled.json"  # as _loader.STAMP


def _say(message: str) -> None:
    print(f"localsched setup: {message}", file=sys.stderr)


def _load_loader() -> Any:
    """``localsched.scheduler._loader`` (stdlib only), without the package."""
    spec = importlib.util.spec_from_file_location("_loader", SOURCE_DIR / "_loader.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildCoreExt(build_ext):
    """``build_ext`` that runs mypyc, stamps a complete build, drops a partial one.

    mypyc runs when the extensions are built rather than when ``setup.py`` is
    loaded: pip loads it three times (requirements, metadata, build), each
    listing the sources, and mypyc's analysis takes half a minute.
    """

    def run(self) -> None:
        self._failed = False
        if self.distribution.ext_modules == [PLACEHOLDER]:
            self.distribution.ext_modules = _mypyc_extensions()
            self._failed = not self.distribution.ext_modules
            # Set the new extensions up as setuptools set the placeholder up
            # (the one option finalize_options cannot take twice reset first).
            self.swig_opts = None
            super().finalize_options()
        super().run()
        names = [*(f"{PACKAGE}.{name}" for name in COMPILED), f"{GROUP}__mypyc"]
        places = [(Path(self.build_lib), Path(self.build_lib, *PACKAGE.split(".")))]
        if self.inplace or getattr(self, "editable_mode", False):
            places.append((Path("."), SOURCE_DIR))
        if self._failed:
            _say("the compiled core did not build; installing it as pure Python")
        for root, package_dir in places:
            outputs = [root / self.get_ext_filename(name) for name in names]
            stamp = package_dir / STAMP
            if self._failed:
                # No half-compiled core, nor an older build left in place.
                for path in [*outputs, stamp]:
                    path.unlink(missing_ok=True)
            else:
                stamp.write_text(_stamp(outputs))

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception:
            # The extensions are optional: build_ext warns and goes on.
            self._failed = True
            raise


def _stamp(outputs: list[Path]) -> str:
    record: dict[str, Any] = {
        "extensions": sorted(path.name for path in outputs),
        # Every source of the package, compiled or not: the compiled modules
        # were built against all of them (``_loader.check``).
        "sources": _load_loader().source_hashes(SOURCE_DIR),
    }
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def _mypyc_extensions() -> list[Any]:
    try:
        from mypyc.build import mypycify

        extensions = mypycify(
            [
                # The build environment has none of the dependencies: errors
                # in the modules the core imports (not compiled) do not count.
                "--follow-imports=silent",
                "--ignore-missing-imports",
                *(str(SOURCE_DIR / f"{name}.py") for name in COMPILED),
            ],
            opt_level="3",
            group_name=GROUP,
        )
    except (Exception, SystemExit) as error:  # mypy reports errors by exiting
        _say(f"mypyc failed ({error!r}); the core stays pure Python")
        return []
    for extension in extensions:
        # A missing or failing C compiler leaves the pure core (see BuildCoreExt).
        extension.optional = True
    return list(extensions)


#: Stands for the compiled core until ``BuildCoreExt`` runs mypyc (it makes the
#: wheel platform-specific, as the compiled one is).
PLACEHOLDER = Extension(f"{GROUP}__mypyc", sources=[], optional=True)


def _ext_modules() -> list[Extension]:
    if os.environ.get("LOCALSCHED_PURE_PYTHON", "") not in ("", "0"):
        _say("LOCALSCHED_PURE_PYTHON is set: the core stays pure Python")
        return []
    return [PLACEHOLDER]


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildCoreExt})
