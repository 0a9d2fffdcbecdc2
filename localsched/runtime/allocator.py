"""Give memory back to the OS after a large release of tasks.

After a million tasks are released, the scheduler process holds freed memory
that the C allocator keeps for reuse: the tables of emptied dicts (until they
are cleared) and free chunks in the middle of glibc's heaps, which it only
returns from the top. :class:`AllocatorTrim` notices, on the scheduler
thread's tick, that the number of tasks fell to a quarter of its peak, clears
the runtime's empty per-task tables and asks glibc to trim (``malloc_trim``,
as dask's workers do on request). Elsewhere than glibc it only clears tables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Trim only after at least this many tasks were alive at once: below it the
#: memory kept is small and a trim (it walks the heap) not worth its time.
TRIM_FROM_TASKS = 10_000


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    return trim


class AllocatorTrim:
    """Trim once per large release: the peak resets to what is left."""

    def __init__(self, threshold: int = TRIM_FROM_TASKS) -> None:
        self.threshold = threshold
        #: Most tasks alive since the last trim.
        self.peak = 0
        #: Trims done (for tests and diagnostics).
        self.trims = 0
        self._malloc_trim: Callable[[int], int] | bool | None = False  # unloaded

    def after_tick(self, n_tasks: int, tables: Iterable[dict[Any, Any]]) -> bool:
        """Note the task count; trim if it fell to a quarter of the peak.

        ``tables`` are per-task dicts of the runtime, cleared if empty.
        Returns whether it trimmed.
        """
        if n_tasks >= self.peak:
            self.peak = n_tasks
            return False
        if self.peak < self.threshold or n_tasks * 4 > self.peak:
            return False
        self.peak = n_tasks
        for table in tables:
            if not table:
                table.clear()  # an emptied dict keeps its largest table
        if self._malloc_trim is False:
            self._malloc_trim = _load_malloc_trim()
        if callable(self._malloc_trim):
            try:
                self._malloc_trim(0)
            except Exception:  # never let housekeeping stop the loop
                logger.debug("malloc_trim failed", exc_info=True)
        self.trims += 1
        return True
