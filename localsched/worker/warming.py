"""Warm imports: a worker imports heavy modules in the background once ready.

A fresh worker imports only its own modules (fast start-up); the first task
that needs numpy, pandas or dask.dataframe would then pay for importing them,
which made the first dask-collection compute slower than dask's (whose workers
deserialize the same modules on their first task too, but started earlier).
The cluster names the modules to import (``LocalCluster(warm_imports=...)``,
by default the heavy ones the user's process has imported); the worker
imports them on a daemon thread *after* its ``Hello``, so start-up never waits,
and only once it has had no task to run for :data:`QUIET` seconds: a program
that submits work right after starting its cluster (the common case) finds
its workers free, not busy importing pandas.

A task that starts while a module is being imported waits for that import
(imports of one package from two threads can deadlock), then runs; no
other warm import starts while tasks are queued or running. An import that
fails is logged (``Client.get_worker_logs``, and on stderr) and skipped; the
worker goes on.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

logger = logging.getLogger("localsched.worker.warming")

__all__ = [
    "TemplateWarmUp",
    "WarmUp",
    "children_cpu_ticks",
    "import_logged",
    "warm_imports",
]


#: Seconds between two looks at a busy worker before the next warm import.
IDLE_POLL = 0.02
#: Seconds without a task (since the warm-up began, or since the worker was
#: last busy) before a warm import starts: work sent at once never waits.
QUIET = 0.3


class WarmUp:
    """Imports modules on a background thread, never at the same time as a task.

    Two threads importing the same package at once can fail: CPython's import
    locks raise ``_DeadlockError`` on packages whose modules import each other
    (seen with numpy: the task then got "cannot load module more than once").
    So each warm import runs under :attr:`lock`, and only while ``is_busy()`` is
    false (no task queued or running); a task calls :meth:`wait` after it was
    registered as executing and before it unpickles anything: it waits for the
    one import in progress, and no other starts while it runs.
    """

    def __init__(
        self,
        names: Sequence[str],
        is_busy: Callable[[], bool] | None = None,
        quiet: float = QUIET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = list(names)
        self._is_busy = is_busy
        self.quiet = quiet
        self._clock = clock
        self.lock = threading.Lock()
        #: Set once every module was tried: :meth:`wait` costs nothing then.
        self.is_done = not self.names
        #: The modules whose import failed.
        self.failed: list[str] = []

    def run(self) -> list[str]:
        """Import each module in order; return those that failed.

        Failures (any exception, ``SystemExit`` included: a module may exit at
        import) are logged with their traceback and do not stop the others.
        """
        pause = threading.Event()
        is_busy = self._is_busy
        clock = self._clock
        quiet_since = clock()
        for name in self.names:
            while True:
                with self.lock:
                    now = clock()
                    if is_busy is not None and is_busy():
                        quiet_since = now
                    elif now - quiet_since >= self.quiet:
                        self._import(name)
                        break
                pause.wait(IDLE_POLL)
        self.is_done = True
        return self.failed

    def _import(self, name: str) -> None:
        if not import_logged(name):
            self.failed.append(name)

    def wait(self) -> None:
        """Wait for the warm import in progress, if any (a task, before it
        loads its function and arguments)."""
        if not self.is_done:
            with self.lock:
                pass

    def start(self) -> threading.Thread | None:
        """Run on a daemon thread (None if there is nothing to import)."""
        if self.is_done:
            return None
        thread = threading.Thread(
            target=self.run, name="localsched-warm-imports", daemon=True
        )
        thread.start()
        return thread


def import_logged(name: str) -> bool:
    """Import module ``name``; False (logged, with the traceback) if that
    failed. Any exception, ``SystemExit`` included: a module may exit at
    import."""
    try:
        importlib.import_module(name)
    except (Exception, SystemExit):
        logger.warning("Warm import of %r failed; skipped", name, exc_info=True)
        return False
    return True


def warm_imports(
    names: Sequence[str],
    is_busy: Callable[[], bool] | None = None,
    quiet: float = QUIET,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Import ``names`` now, in this thread (see :class:`WarmUp`); return
    those that failed."""
    return WarmUp(names, is_busy, quiet, clock).run()


#: Seconds between two looks at the template's children's CPU time.
CHILDREN_POLL = 0.25


class TemplateWarmUp:
    """Warm imports in the worker template: the modules its later forks inherit.

    The cluster names them (``{"warm": [...], "quiet": s}`` on the template's
    socket). The template imports one per turn of its loop (it has one thread:
    a fork waits for at most that one import), and only once all was quiet for
    ``quiet`` seconds: no request came and the processes it forked used no CPU
    (read from ``/proc``), so it does not compete with the first workers'
    start, their own warm imports or their tasks. A failed import is logged
    (on the template's stderr: the user's) and skipped. A module that started
    a thread at import would make later forks unsafe: the template then
    refuses to fork (:attr:`thread_starter`; workers then spawn).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu_of: Callable[[Iterable[int]], int] | None = None,
    ) -> None:
        self._clock = clock
        self._cpu_of = cpu_of or children_cpu_ticks
        #: Modules still to import, in order.
        self.pending: list[str] = []
        self._asked: set[str] = set()
        self.quiet = 1.0
        self.quiet_since = clock()
        #: Pids of the running processes forked by the template.
        self.children: set[int] = set()
        self._ticks: int | None = None
        #: The module whose import started a thread (None: forks are safe).
        self.thread_starter: str | None = None

    def add(self, names: Iterable[str], quiet: float) -> None:
        for name in names:
            if name not in self._asked:
                self._asked.add(name)
                self.pending.append(name)
        self.quiet = quiet

    def on_request(self) -> None:
        self.quiet_since = self._clock()

    def timeout(self) -> float | None:
        """Seconds until the next look (None: nothing left to import)."""
        if not self.pending or self.thread_starter is not None:
            return None
        remaining = self.quiet_since + self.quiet - self._clock()
        return max(0.0, min(CHILDREN_POLL, remaining))

    def step(self) -> str | None:
        """Import the next module if all was quiet long enough; its name."""
        if self.timeout() is None:
            return None
        now = self._clock()
        ticks = self._cpu_of(self.children)
        if ticks != self._ticks:  # the children were busy since the last look
            self._ticks = ticks
            self.quiet_since = now
        if now - self.quiet_since < self.quiet:
            return None
        name = self.pending.pop(0)
        import_logged(name)
        if threading.active_count() > 1:
            self.thread_starter = name
            logger.warning(
                "Warm import of %r started a thread in the worker template: it "
                "forks no more (new workers start as fresh interpreters)",
                name,
            )
        return name


def children_cpu_ticks(pids: Iterable[int]) -> int:
    """User and system CPU time of processes ``pids``, in clock ticks (those
    that ended count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                # After the command's closing parenthesis: state is field 3,
                # utime and stime fields 14 and 15 (proc(5)).
                fields = stat.read().rpartition(b")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total
