"""The user's code around a compute, persist or submit call (``Computation.code``).

dask's client walks up the stack from the call, skips the frames of the
libraries in ``distributed.diagnostics.computations.ignore-modules`` and
``ignore-files``, and sends the source of the first ``nframes`` user frames
with the graph (``nframes`` is 0 by default: nothing is captured). This is the
same walk, with localsched's own modules skipped as dask skips
``distributed``'s. The settings are read from dask's config when the program has
imported dask; without it, dask's defaults apply.
"""

from __future__ import annotations

import inspect
import re
import sys
import traceback
from typing import Any

from localsched.scheduler.computations import SourceCode

__all__ = ["computation_code"]

#: dask's defaults of ``distributed.diagnostics.computations.ignore-modules``.
IGNORE_MODULES = [
    "asyncio", "functools", "threading", "datashader", "dask", "debugpy",
    "distributed", "ipykernel", "coiled", "cudf", "cuml", "matplotlib", "pluggy",
    "prefect", "rechunker", "xarray", "xgboost", "xdist", "__channelexec__",
    "execnet",
]  # fmt: skip
#: dask's defaults of ``distributed.diagnostics.computations.ignore-files``.
IGNORE_FILES = ["runpy", r".*py\.?test.*", "pycharm", "get_output_via_markers"]


def _setting(key: str, default: Any) -> Any:
    config = sys.modules.get("dask.config")
    if config is None:
        return default
    return config.get(f"distributed.diagnostics.computations.{key}", default)


def computation_code(nframes: int | None = None) -> tuple[SourceCode, ...]:
    """Source of the user frames that led to this call, outermost first.

    ``nframes`` defaults to dask's ``distributed.diagnostics.computations.nframes``
    (0: no frames, and no stack walk).
    """
    if nframes is None:
        nframes = int(_setting("nframes", 0))
    if nframes <= 0:
        return ()
    ignore_modules = _setting("ignore-modules", IGNORE_MODULES)
    ignore_files = _setting("ignore-files", IGNORE_FILES)
    for name, value in (("modules", ignore_modules), ("files", ignore_files)):
        if not isinstance(value, list):
            raise TypeError(
                f"Ignored {name} must be a list. Instead got ({type(value)}, {value})"
            )
    mod_pattern = re.compile(
        "|".join(f"(?:{mod})" for mod in ["localsched", *ignore_modules])
    )
    fname_pattern = None
    if ignore_files:
        # As dask: /path/to/foo, /path/to/foo.py[c], /path/to/foo/bar.py and
        # <frozen foo>, but not a name that merely contains foo.
        names = "|".join(ignore_files)
        fname_pattern = re.compile(
            rf".*[\\/]({names})([\\/]|\.pyc?$|$)|<frozen ({names})>$"
        )
    code: list[SourceCode] = []
    for frame, lineno in traceback.walk_stack(sys._getframe().f_back):
        if len(code) >= nframes:
            break
        if frame.f_code.co_name in ("<listcomp>", "<dictcomp>"):
            continue
        if mod_pattern.match(frame.f_globals.get("__name__", "")):
            continue
        if fname_pattern and fname_pattern.match(frame.f_code.co_filename):
            continue
        where = (lineno, lineno - frame.f_code.co_firstlineno, frame.f_code.co_filename)
        try:
            code.append(SourceCode(inspect.getsource(frame), *where))
        except OSError:
            cell = _ipython_cell()
            if cell is not None:
                code.append(SourceCode(cell, *where))
            break
        if _stops_the_walk(frame):
            break
    return tuple(reversed(code))


def _ipython_cell() -> str | None:
    """The current IPython cell's source (a frame without a file), if any."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return None
    cell: str = shell.history_manager._i00
    return cell


def _stops_the_walk(frame: Any) -> bool:
    """dask's rules: nothing above an execnet (pytest-xdist) frame, a module
    missing from ``sys.modules``, or IPython's interactive shell is user code."""
    caller = frame.f_back
    if not hasattr(caller, "f_globals"):
        return False
    module_name = caller.f_globals.get("__name__", "")
    if module_name == "__channelexec__":
        return True
    module = sys.modules.get(module_name)
    if module is None:
        return True
    return bool(module.__name__.endswith("interactiveshell"))
