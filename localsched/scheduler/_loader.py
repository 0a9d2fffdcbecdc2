"""Which build of the core this process imports: compiled (mypyc) or pure.

``setup.py`` compiles most modules of this package with mypyc, next to their
sources, and writes a stamp (``_compiled.json``) with the hash of every source of
the package at that moment. Python would import an extension module in
preference to the ``.py`` beside it, even after the ``.py`` was edited, so the
package's ``__init__`` calls ``select`` before any other module of the core is
imported, and the compiled modules are used only if

- ``LOCALSCHED_PURE_PYTHON`` is not set (to ``1``, or anything but ``0``),
- the stamp is there and names every extension module present, each present,
- and every ``.py`` of the package is unchanged since the build.

Otherwise every module that has an extension beside it is imported from its
``.py`` (a finder placed first on ``sys.meta_path``), all of them together: the
compiled modules call each other directly, so a mix of compiled and pure copies
of the core is never loaded. A stale build logs a warning that says how to
rebuild; a missing one is silent (no compiler at install time is allowed).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: Set to ``1`` (at install time or at import) for the pure Python core.
PURE_SWITCH = "LOCALSCHED_PURE_PYTHON"
STAMP = "_compiled.json"
#: Not part of the stamp: these two choose the build and are never compiled.
_UNSTAMPED = frozenset({"__init__.py", "_loader.py"})

logger = logging.getLogger("localsched.scheduler")


def source_hashes(package_dir: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the package's sources, as ``setup.py`` stamps."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(package_dir.glob("*.py"))
        if path.name not in _UNSTAMPED
    }


def extension_modules(package_dir: Path) -> dict[str, str]:
    """``{module name: file name}`` of the extension modules this Python loads."""
    found: dict[str, str] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in package_dir.glob(f"*{suffix}"):
            name = path.name[: -len(suffix)]
            if "." not in name:  # not "tasks.cpython-311-x86_64-linux-gnu" for ".so"
                found.setdefault(name, path.name)
    return found


def check(package_dir: Path, pure_requested: bool) -> tuple[bool, str]:
    """``(use the compiled modules, why)`` for the package in ``package_dir``."""
    extensions = extension_modules(package_dir)
    if not extensions:
        return False, "no compiled core installed"
    if pure_requested:
        return False, f"{PURE_SWITCH} is set"
    try:
        stamp = json.loads((package_dir / STAMP).read_text())
        stamped = set(stamp["extensions"])
        sources = dict(stamp["sources"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return False, f"stale compiled core: no valid {STAMP} ({error!r})"
    present = set(extensions.values())
    if present != stamped:
        odd = sorted(present ^ stamped)
        return False, f"stale compiled core: extensions differ from the stamp {odd}"
    current = source_hashes(package_dir)
    edited = sorted(
        name
        for name in current.keys() | sources.keys()
        if current.get(name) != sources.get(name)
    )
    if edited:
        return False, f"stale compiled core: {', '.join(edited)} changed since built"
    return True, "compiled core, built from these sources"


class _PureFinder:
    """Imports the listed modules of the core from their ``.py`` files."""

    def __init__(self, package: str, package_dir: Path, names: Sequence[str]):
        self._files = {
            f"{package}.{name}": package_dir / f"{name}.py"
            for name in names
            if (package_dir / f"{name}.py").exists()
        }

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._files.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def select(package: str, package_dir: Path) -> tuple[bool, str]:
    """Choose the build before the core's modules are imported; say which."""
    switch = os.environ.get(PURE_SWITCH, "")
    compiled, reason = check(package_dir, switch not in ("", "0"))
    if not compiled:
        names = list(extension_modules(package_dir))
        if names:
            sys.meta_path.insert(0, _PureFinder(package, package_dir, names))
        if reason.startswith("stale"):
            logger.warning(
                "localsched: using the pure Python scheduler core (%s); "
                "rebuild it with `python -m pip install -e .`, or set %s=1",
                reason,
                PURE_SWITCH,
            )
    return compiled, reason
