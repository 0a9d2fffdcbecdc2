"""Finalizers that still work at exit, and run after the clusters have closed.

``weakref.finalize`` registers an exit hook of its own when the first finalizer
of the process is created. For the shared-memory store that was when the first
cluster started, so the hook was registered *after* ``localsched.deploy.local``'s
``_close_open_clusters``, and ``atexit`` runs hooks last in, first out: a
program that ended without ``close()`` had its segments unlinked while workers
still wrote new ones, and the hook then marked every finalizer as shut down, so
the cluster's own ``store.close()`` did nothing (and the janitor, told "bye",
did not sweep). Turning the finalizer's ``atexit`` off does not help: once that
hook has run, calling any ``weakref.finalize`` does nothing at all.

:class:`Finalizer` keeps ``weakref.finalize``'s promise without that trap:

- calling it runs the function once, at any time, during exit too;
- the object's garbage collection runs it, as ``weakref.finalize`` does;
- what is still pending at exit runs in this module's exit hook, registered
  when the module is first imported. ``localsched.deploy.local`` imports the store,
  and so this module, before it registers ``_close_open_clusters``: the
  clusters close first (workers stopped, stores closed), and only what no
  cluster closed is removed here.
"""

from __future__ import annotations

import atexit
import itertools
import sys
import weakref
from collections.abc import Callable

__all__ = ["Finalizer"]

_Entry = tuple["weakref.ref[object]", Callable[..., object], tuple[object, ...]]

#: Finalizers not run yet, by creation number. The weak reference lives here
#: and not in the object: a weakref that is garbage along with its object
#: calls no callback (gc's rule for cyclic trash).
_pending: dict[int, _Entry] = {}
_numbers = itertools.count()


class Finalizer:
    """Run ``func(*args)`` once: when called, when ``obj`` is garbage, or at exit.

    Parameters
    ----------
    obj : object
        The owner; ``func`` and ``args`` must not reference it.
    func : callable
        The cleanup.
    *args
        Its arguments.
    """

    __slots__ = ("_number",)

    def __init__(self, obj: object, func: Callable[..., object], *args: object) -> None:
        number = self._number = next(_numbers)
        _pending[number] = (weakref.ref(obj, lambda _: _run(number)), func, args)

    def __call__(self) -> None:
        """Run the cleanup now, unless it ran already (then do nothing)."""
        _run(self._number)

    @property
    def alive(self) -> bool:
        """True until the cleanup has run."""
        return self._number in _pending


def _run(number: int) -> None:
    entry = _pending.pop(number, None)  # atomic: one caller gets the entry
    if entry is not None:
        _, func, args = entry
        func(*args)


@atexit.register
def _run_pending_at_exit() -> None:
    """At exit, after ``_close_open_clusters`` (see the module docstring)."""
    for number in sorted(_pending, reverse=True):  # newest first, as finalize
        try:
            _run(number)
        except Exception:
            sys.excepthook(*sys.exc_info())
