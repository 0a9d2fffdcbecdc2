"""Warm imports: a worker imports heavy modules in the background once ready.

A fresh worker imports only its own modules (fast start-up); the first task
that needs numpy, pandas or dask.dataframe would then pay for importing them,
which made the first dask-collection compute slower than dask's (whose workers
deserialize the same modules on their first task too, but started earlier).
The cluster names the modules to import (``LocalCluster(warm_imports=...)``,
by default the heavy ones the user's process has imported); the worker
imports them on a daemon thread *after* its ``Hello``, so start-up never waits,
and only while it has no task to run: warming never slows a task down.

A task that needs a module being imported waits on the import system's
per-module lock and then uses the finished module: never slower than
importing it itself. An import that fails is logged (``Client.get_worker_logs``,
and on stderr) and skipped; the worker goes on.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence

logger = logging.getLogger("localsched.worker.warming")

__all__ = ["start_warm_imports", "warm_imports"]


#: Seconds between two looks at a busy worker before the next warm import.
IDLE_POLL = 0.02


def warm_imports(
    names: Sequence[str], is_busy: Callable[[], bool] | None = None
) -> list[str]:
    """Import each module of ``names`` in order; return those that failed.

    Before each module, waits while ``is_busy()`` (tasks queued or running):
    warming uses idle time only, so it never competes with a task for the CPU
    and the GIL (a task needing a module imports it itself, or waits for the
    one import in progress). Failures (any exception, ``SystemExit`` included:
    a module may exit at import) are logged with their traceback and do not
    stop the others.
    """
    failed = []
    pause = threading.Event()
    for name in names:
        while is_busy is not None and is_busy():
            pause.wait(IDLE_POLL)
        try:
            importlib.import_module(name)
        except (Exception, SystemExit):
            logger.warning("Warm import of %r failed; skipped", name, exc_info=True)
            failed.append(name)
    return failed


def start_warm_imports(
    names: Sequence[str], is_busy: Callable[[], bool] | None = None
) -> threading.Thread | None:
    """Start importing ``names`` on a daemon thread (None if there are none)."""
    if not names:
        return None
    thread = threading.Thread(
        target=warm_imports,
        args=(list(names), is_busy),
        name="localsched-warm-imports",
        daemon=True,
    )
    thread.start()
    return thread
