"""Calls handed to in-process workers by reference: nothing is pickled.

A ``processes=False`` cluster's workers are threads of the client's process, as
dask's in-process workers are: a task's function and arguments reach them as
the caller's own objects (a closure over a lock runs, an argument the task
mutates is the caller's). The client keeps ``(function, args, kwargs)`` here and
sends a :class:`LocalRef` in the task's spec instead of pickles; the worker
looks it up. The entry is dropped with the task's other argument payloads,
when the scheduler forgets the task (``track_arguments``), or at once if the
call was a duplicate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

__all__ = ["LocalRef", "drop", "get", "keep"]


@dataclass(frozen=True, slots=True)
class LocalRef:
    """Names an object kept in this process (:func:`keep`)."""

    ident: int


_objects: dict[int, Any] = {}
_idents = itertools.count(1)  # next() and dict item assignment: atomic


def keep(obj: Any) -> LocalRef:
    """Keep ``obj`` until :func:`drop`; the reference that names it."""
    ref = LocalRef(next(_idents))
    _objects[ref.ident] = obj
    return ref


def get(ref: LocalRef) -> Any:
    """The object ``ref`` names; ``LookupError`` once dropped."""
    try:
        return _objects[ref.ident]
    except KeyError:
        raise LookupError(f"in-process object {ref.ident} was released") from None


def drop(ref: LocalRef) -> None:
    """Forget the object (idempotent)."""
    _objects.pop(ref.ident, None)


def count() -> int:
    """Objects kept now (for tests and leak checks)."""
    return len(_objects)
