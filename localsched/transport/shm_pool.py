"""The free pool of a shared-memory store, kept in the background.

Writing a large value into fresh /dev/shm pages costs about three times as much
as writing it into pages already allocated (the kernel allocates each page on
the write; measured in docs/benchmarks.md), and pages kept free forever are
memory taken from everything else (a soak run filled the pool to its cap and
kept it there). A :class:`PoolKeeper` thread does both halves:

- **warm-up by recent use, when quiet**: every large value the store writes (a
  ``put``: a scatter, a large argument) is noted with its size class; once no
  large value was written or adopted for :data:`QUIET_SECONDS`, the keeper
  pre-allocates (``fallocate``, outside the store's lock) as many free segments
  of that class as were written in the last ``idle_seconds`` (at most
  :data:`MAX_WARM_PER_CLASS`), counting only free segments no reader maps, so
  the next value of that size is written into resident pages. Waiting for a
  quiet moment matters on a small machine: warming while values are being
  written took the CPU from the writers (a 200 MB hand-off's producer 0.18-0.30 s
  with warming at once, 0.13-0.14 s without, on 2 busy cores);
- **trimming when idle**: a free segment nobody took for ``idle_seconds`` is
  unlinked, so a quiet cluster returns its pool to the operating system;
- **mapping what is free**: a large segment released into the pool is mapped
  with its page tables filled (:meth:`BlobStore.map_free`, see
  :mod:`~localsched.transport.segment_maps`) at once, not waiting for quiet:
  it costs a fraction of warming a new segment (filling the page tables of
  256 MiB: 30-45 ms; allocating its pages: 100-160 ms), and the next put of
  that size then copies at ``memcpy`` speed (about half the time of a
  ``pwrite`` into the same pages).

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

__all__ = [
    "MAX_WARM_PER_CLASS",
    "POOL_IDLE_SECONDS",
    "QUIET_SECONDS",
    "WARM_FROM",
    "PoolKeeper",
]

logger = logging.getLogger(__name__)

#: A cluster's store keeps its pool by the use of the last 5 seconds.
POOL_IDLE_SECONDS = 5.0
#: Seconds without a large write before the keeper warms segments.
QUIET_SECONDS = 0.5
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
        self._last_write = 0.0  # monotonic time of the last large write or adopt
        self._thread = threading.Thread(
            target=self._run, name="localsched-shm-pool", daemon=True
        )
        self._thread.start()

    def note(self, capacity: int) -> None:
        """The store wrote a value of size class ``capacity``: warm one more."""
        now = time.monotonic()
        with self._lock:
            times = self._recent.setdefault(capacity, collections.deque())
            times.append(now)
            if len(times) > MAX_WARM_PER_CLASS:
                times.popleft()
            self._last_write = now
        self._wake.set()

    def freed(self) -> None:
        """A large segment joined the free pool: map it soon."""
        self._wake.set()

    def busy(self) -> None:
        """A large value was written elsewhere (a worker's): not quiet yet."""
        with self._lock:
            self._last_write = time.monotonic()

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
        pending = False
        while not self._stopped:
            # Woken by a write, every half window to trim what went idle, and
            # soon again while there is warming to do once quiet.
            self._wake.wait(QUIET_SECONDS if pending else self.idle_seconds / 2)
            self._wake.clear()
            store = self._store()
            if store is None or self._stopped:
                return
            try:
                pending = self._keep(store)
            except OSError:  # say, /dev/shm unusable now: the writes will tell
                logger.warning("keeping the shared-memory pool failed", exc_info=True)
            del store  # only a weak reference between rounds

    def _keep(self, store: BlobStore) -> bool:
        """Trim, and warm if quiet; return whether warming waits for quiet."""
        now = time.monotonic()
        store.trim_idle(now - self.idle_seconds)
        store.map_free()
        wanted = self.wanted(now)
        with self._lock:
            if now - self._last_write < QUIET_SECONDS:
                return bool(wanted)
        for capacity, count in sorted(wanted.items()):
            if self._stopped:
                break
            store.prewarm(count * capacity, segment_size=capacity)
        return False
