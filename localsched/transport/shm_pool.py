"""The free pool of a shared-memory store, kept in the background.

Writing a large value into fresh /dev/shm pages costs about three times as much
as writing it into pages already allocated (the kernel allocates each page on
the write; measured in docs/benchmarks.md), and pages kept free forever are
memory taken from everything else (a soak run filled the pool to its cap and
kept it there). A :class:`PoolKeeper` thread does both halves:

- **warm-up by recent use**: every large value written (a ``put``, or a worker's
  result the store adopts) is noted with its size class; the keeper keeps as many
  pre-allocated free segments of that class as were written in the last
  ``idle_seconds`` (at most :data:`MAX_WARM_PER_CLASS`), allocated with
  ``fallocate`` outside the store's lock, so the next value of that size is
  written into resident pages;
- **trimming when idle**: a free segment nobody took for ``idle_seconds`` is
  unlinked, so a quiet cluster returns its pool to the operating system.

The thread starts with the store and holds only a weak reference to it: a store
that is garbage stops it, and :meth:`BlobStore.close` stops and joins it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localsched.transport.shm import BlobStore

__all__ = ["MAX_WARM_PER_CLASS", "POOL_IDLE_SECONDS", "WARM_FROM", "PoolKeeper"]

logger = logging.getLogger(__name__)

#: A cluster's store keeps its pool by the use of the last 5 seconds.
POOL_IDLE_SECONDS = 5.0
#: Values of at least this many bytes are noted; fresh pages cost a smaller one
#: under 3 ms.
WARM_FROM = 8 << 20
#: Pre-allocated free segments kept per size class, at most (the store's cap on
#: free bytes bounds them all together).
MAX_WARM_PER_CLASS = 4


class PoolKeeper:
    """Sizes a store's free pool by recent use and trims it when idle.

    Parameters
    ----------
    store : BlobStore
        The store whose pool it keeps (held weakly).
    idle_seconds : float
        Window over which use is counted, and time after which a free segment
        nobody took is unlinked.
    """

    def __init__(self, store: BlobStore, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._store = weakref.ref(store)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        #: capacity -> monotonic times of recent writes of that size class
        self._recent: dict[int, collections.deque[float]] = {}
        self._thread = threading.Thread(
            target=self._run, name="localsched-shm-pool", daemon=True
        )
        self._thread.start()

    def note(self, capacity: int) -> None:
        """A value of size class ``capacity`` was just written: warm one more."""
        with self._lock:
            times = self._recent.setdefault(capacity, collections.deque())
            times.append(time.monotonic())
            if len(times) > MAX_WARM_PER_CLASS:
                times.popleft()
        self._wake.set()

    def wanted(self, now: float) -> dict[int, int]:
        """``{capacity: segments}`` to keep free, from the writes of the window."""
        cutoff = now - self.idle_seconds
        with self._lock:
            for capacity, times in list(self._recent.items()):
                while times and times[0] < cutoff:
                    times.popleft()
                if not times:
                    del self._recent[capacity]
            return {capacity: len(times) for capacity, times in self._recent.items()}

    def stop(self) -> None:
        """Stop the thread and wait for it (unless called from it)."""
        self._stopped = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped:
            # Woken by a write, or every half window to trim what went idle.
            self._wake.wait(self.idle_seconds / 2)
            self._wake.clear()
            store = self._store()
            if store is None or self._stopped:
                return
            try:
                self._keep(store)
            except OSError:  # say, /dev/shm unusable now: the writes will tell
                logger.warning("keeping the shared-memory pool failed", exc_info=True)
            del store  # only a weak reference between rounds

    def _keep(self, store: BlobStore) -> None:
        now = time.monotonic()
        store.trim_idle(now - self.idle_seconds)
        for capacity, count in sorted(self.wanted(now).items()):
            if self._stopped:
                return
            store.prewarm(count * capacity, segment_size=capacity)
