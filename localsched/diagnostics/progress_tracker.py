"""Counting a computation's progress on the scheduler thread.

``ProgressTracker`` is a ``SchedulerPlugin`` registered only while a progress
bar (or the dashboard) runs: the plugin registry indexes overridden hooks, so
the scheduler makes no call at all once it is removed. Its ``transition`` hook
does one dict lookup for keys it does not track and a few integer updates for
those it does; readers on other threads take ``snapshot()``, a copy made under
a lock, and never walk scheduler state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from localsched.plugins import SchedulerPlugin

Key = Hashable


@dataclass(frozen=True)
class PrefixProgress:
    """Counts of one task prefix (``inc`` for keys ``inc-<token>``)."""

    name: str
    total: int
    done: int
    erred: int
    cancelled: int
    #: Seconds from the tracker's start to this prefix's latest finished task.
    active: float = 0.0

    @property
    def finished(self) -> int:
        """Tasks that will not run again: in memory, erred or cancelled."""
        return self.done + self.erred + self.cancelled

    @property
    def remaining(self) -> int:
        return self.total - self.finished


@dataclass(frozen=True)
class ProgressSnapshot:
    """A consistent copy of a tracker's counts, safe to read on any thread."""

    prefixes: tuple[PrefixProgress, ...]
    elapsed: float
    complete: bool
    #: ``(key, exception text)`` of the first task that erred, if any.
    first_error: tuple[Key, str] | None

    @property
    def total(self) -> int:
        return sum(p.total for p in self.prefixes)

    @property
    def finished(self) -> int:
        return sum(p.finished for p in self.prefixes)

    @property
    def done(self) -> int:
        return sum(p.done for p in self.prefixes)

    @property
    def erred(self) -> int:
        return sum(p.erred for p in self.prefixes)

    @property
    def fraction(self) -> float:
        total = self.total
        return 1.0 if total == 0 else self.finished / total


class ProgressTracker(SchedulerPlugin):
    """Counts transitions of the tracked keys per prefix (scheduler thread).

    Parameters
    ----------
    keys
        The keys to follow; their dependencies not yet in memory are followed
        too (a bar for ``total = submit(sum, futures)`` shows the ``map`` tasks).
    complete
        Count tasks already in memory when tracking starts (as dask's
        ``complete=True``); else only what is left to do.
    group_of
        The group (bar) of a key; None: its task prefix (dask's
        ``group_by="prefix"``).
    """

    def __init__(
        self,
        keys: Iterable[Key],
        complete: bool = True,
        group_of: Callable[[Key], Any] | None = None,
    ) -> None:
        self.name = f"progress-{id(self):x}"
        self._keys = list(keys)
        self._complete = complete
        self._group_of = group_of
        self._lock = threading.Lock()
        # prefix name -> [total, done, erred, cancelled]
        self._counts: dict[str, list[int]] = {}
        # prefix name -> monotonic time its latest task finished (for rates)
        self._latest: dict[str, float] = {}
        self._prefix_of: dict[Key, str] = {}
        self._remaining: set[Key] = set()
        self._erred: set[Key] = set()
        self._first_error: tuple[Key, str] | None = None
        self._scheduler: Any = None
        self._start = time.monotonic()
        self._stop: float | None = None
        #: Set when every tracked task is in memory, erred or cancelled.
        self.finished = threading.Event()

    # -- on the scheduler thread ----------------------------------------------------

    def attach(self, scheduler: Any) -> None:
        """Register on ``scheduler`` and count the tracked tasks' present states.

        Must run on the scheduler thread (``runtime.call``): registering and the
        first count happen in one step, so no transition falls between them.
        """
        self._scheduler = scheduler
        tasks = scheduler.tasks
        roots = [tasks[key] for key in self._keys if key in tasks]
        # As dask's ``dependent_keys``: what is left to do is reachable without
        # passing through a result already made; complete=True also counts what
        # lies behind results (done, even if released since).
        needed = _reachable(roots, stop=("memory", "erred"))
        counted = _reachable(roots, stop=("erred",)) if self._complete else needed
        with self._lock:
            group_of = self._group_of
            for ts in counted.values():
                name = ts.prefix.name if group_of is None else str(group_of(ts.key))
                counts = self._counts.setdefault(name, [0, 0, 0, 0])
                counts[0] += 1
                self._prefix_of[ts.key] = name
                if ts.state == "erred":
                    counts[2] += 1
                    self._erred.add(ts.key)
                    self._note_error(ts)
                elif ts.key in needed and ts.state != "memory":
                    self._remaining.add(ts.key)
                else:
                    counts[1] += 1
            self._check_finished()
        if not self.finished.is_set():
            scheduler.add_plugin(self, name=self.name)

    def detach(self, scheduler: Any) -> None:
        """Unregister (scheduler thread); a no-op if already gone."""
        if self.name in scheduler.plugins:
            scheduler.remove_plugin(self.name)

    def transition(
        self,
        key: Key,
        start: str,
        finish: str,
        *args: Any,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        prefix = self._prefix_of.get(key)
        if prefix is None:
            return
        with self._lock:
            counts = self._counts[prefix]
            if finish in ("memory", "erred"):
                self._latest[prefix] = time.monotonic()
            if finish == "memory":
                if key in self._remaining:
                    self._remaining.discard(key)
                    counts[1] += 1
                elif key in self._erred:  # retried after an error
                    self._erred.discard(key)
                    counts[2] -= 1
                    counts[1] += 1
            elif finish == "erred":
                if key in self._remaining:
                    self._remaining.discard(key)
                    self._erred.add(key)
                    counts[2] += 1
                    ts = self._scheduler.tasks.get(key)
                    if ts is not None:
                        self._note_error(ts)
            elif finish == "forgotten" and key in self._remaining:
                self._remaining.discard(key)
                counts[3] += 1
            self._check_finished()

    def _note_error(self, ts: Any) -> None:
        if self._first_error is None:
            blame = ts.exception_blame
            text = (blame.exception_text if blame is not None else "") or (
                ts.exception_text
            )
            self._first_error = (
                ts.key if blame is None else blame.key,
                text or "error",
            )

    def _check_finished(self) -> None:
        if not self._remaining and not self.finished.is_set():
            self._stop = time.monotonic()
            self.finished.set()

    # -- on any thread ----------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        """The counts now, copied under the lock."""
        with self._lock:
            stop = self._stop if self._stop is not None else time.monotonic()
            prefixes = tuple(
                PrefixProgress(
                    name,
                    counts[0],
                    counts[1],
                    counts[2],
                    counts[3],
                    active=self._latest.get(name, self._start) - self._start,
                )
                for name, counts in self._counts.items()
            )
            return ProgressSnapshot(
                prefixes=prefixes,
                elapsed=stop - self._start,
                complete=self.finished.is_set(),
                first_error=self._first_error,
            )


def _reachable(roots: list[Any], stop: tuple[str, ...]) -> dict[Key, Any]:
    """Tasks reachable from ``roots`` through dependencies, not walking past
    tasks in the ``stop`` states; ``needed`` walks exclude memory tasks."""
    found: dict[Key, Any] = {}
    stack = list(roots)
    while stack:
        ts = stack.pop()
        if ts.key in found:
            continue
        if ts.state == "memory" and "memory" in stop:
            continue
        found[ts.key] = ts
        if ts.state not in stop:
            stack.extend(ts.dependencies)
    return found
