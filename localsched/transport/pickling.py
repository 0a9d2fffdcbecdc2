"""Pickling of user code: cloudpickle, keeping where the code came from.

cloudpickle pickles a function defined in ``__main__``, a notebook cell or
another module registered "by value" as its code object. From cloudpickle 3.1
on it writes ``co_filename = "<dynamic-code>"`` into every such code object (to
make pickles deterministic across machines), so a task that raises shows
``File "<dynamic-code>", line 3`` with no file and no source line. Our workers
run on the same machine and read the same files, so the real name is worth
keeping: this pickler records each by-value code object's file name beside it
and restores it with ``code.replace`` when the code is loaded, nested code
objects (lambdas, comprehensions, inner functions) included, whatever version
of cloudpickle reduced it.

Code defined where no file exists (a notebook cell, ``exec`` of a string)
keeps its cell file name, so IPython's traceback display finds the cell in the
client's ``linecache``; the cell's lines travel too and are put in the
worker's ``linecache``, so the traceback text formatted in the worker shows
the source line as well.

Every place in localsched that cloudpickles user objects goes through
:func:`dumps` or subclasses :class:`Pickler`.
"""

from __future__ import annotations

import io
import linecache
import os
import pickle
import types
from collections import ChainMap
from collections.abc import Callable
from types import TracebackType
from typing import Any

import cloudpickle

__all__ = ["Pickler", "dumps", "dumps_traceback", "loads_traceback", "restore_code"]

_BASE_TABLE: Any = cloudpickle.Pickler.dispatch_table


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    reduced: tuple[Any, ...] = _BASE_TABLE[types.CodeType](code)
    rebuild, args = reduced[0], reduced[1]
    filename = code.co_filename
    lines: tuple[str, ...] | None = None
    if not os.path.isfile(filename):
        entry: tuple[Any, ...] | None = linecache.cache.get(filename)
        # A lazy entry is a 1-tuple (a loader to call): only full ones have lines.
        if entry is not None and len(entry) == 4 and entry[2]:
            lines = _shared_lines(filename, entry[2])
    return restore_code, (rebuild, args, filename, lines)


_lines_by_file: dict[str, tuple[list[str], tuple[str, ...]]] = {}


def _shared_lines(filename: str, lines: list[str]) -> tuple[str, ...]:
    # One tuple per cell, so the pickle memo writes a cell's lines once however
    # many of its code objects (nested ones included) a pickle holds.
    known = _lines_by_file.get(filename)
    if known is None or known[0] is not lines:
        known = _lines_by_file[filename] = (lines, tuple(lines))
    return known[1]


def restore_code(
    rebuild: Callable[..., types.CodeType],
    args: tuple[Any, ...],
    filename: str,
    lines: tuple[str, ...] | None = None,
) -> types.CodeType:
    """Rebuild a pickled code object with its original ``co_filename``.

    Referenced by name from pickles that :class:`Pickler` writes.
    """
    code = rebuild(*args)
    if code.co_filename != filename:
        code = code.replace(co_filename=filename)
    if lines is not None and filename not in linecache.cache:
        # An mtime of None keeps linecache.checkcache from dropping the entry.
        size = sum(len(line) for line in lines)
        linecache.cache[filename] = (size, None, list(lines), filename)
    return code


class Pickler(cloudpickle.Pickler):  # type: ignore[misc,unused-ignore]  # untyped base
    """cloudpickle's pickler, keeping each by-value code object's file name."""

    dispatch_table = ChainMap({types.CodeType: _reduce_code}, _BASE_TABLE)


def dumps(
    obj: object,
    protocol: int = 5,
    buffer_callback: Callable[[Any], Any] | None = None,
) -> bytes:
    """``cloudpickle.dumps`` with :class:`Pickler`."""
    with io.BytesIO() as file:
        Pickler(file, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
        return file.getvalue()


def dumps_traceback(tb: TracebackType | None) -> bytes | None:
    """Serialize a traceback for :func:`loads_traceback` (None without tblib).

    Frames are reduced to plain data (code names, file names, line numbers) by
    tblib, as distributed does, so loading needs neither the frames' globals
    nor cloudpickle.
    """
    if tb is None:
        return None
    try:
        from tblib import Traceback  # only on the failure path, if installed
    except ImportError:
        return None
    try:
        return pickle.dumps(Traceback(tb).to_dict(), protocol=5)
    except Exception:
        return None


def loads_traceback(data: bytes | None) -> TracebackType | None:
    """Rebuild what :func:`dumps_traceback` wrote into a real traceback object,
    for ``raise exc.with_traceback(tb)`` and ``Future.traceback()``; None if
    ``data`` is None or tblib is missing."""
    if data is None:
        return None
    try:
        from tblib import Traceback
    except ImportError:
        return None
    tb: TracebackType | None = Traceback.from_dict(pickle.loads(data)).as_traceback()
    return tb
