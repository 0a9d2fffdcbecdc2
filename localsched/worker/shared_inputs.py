"""Dependency values that several tasks of one worker only read: unpickled once.

A task normally unpickles each dependency from shared memory for itself (its
own private mapping, so its writes reach no one). That is the right default,
but it costs a shuffle dearly: dask's task-based shuffle splits each input
partition into a dict of ``n`` pieces, and ``n`` ``getitem`` tasks each select
one piece, so every dict is unpickled ``n`` times (``n`` x ``n`` DataFrame
rebuilds, about 0.3-0.8 ms each with pandas 3). A function marked with
:data:`READS_INPUTS_ONLY` promises to return a value without changing its
inputs (the client marks dask's ``getitem`` nodes, concats of them, and tasks
that read every input through ``select_piece``, which hands out new objects:
``localsched.client.dask_shuffle.reads_inputs_only``); its dependencies are loaded
through this worker's :class:`SharedInputs`, which keeps the last values it
loaded, keyed by the blob that holds them, so each dict is unpickled once per
worker. What such a task returns is pickled into a blob of its own, as always,
so no other task ever sees the shared object.

A blob's ``BlobRef`` names one value for good (a reused segment gets a new
stamp), so a cached value is never stale. Holding it keeps its segment mapped
(and its memory allocated after the scheduler released it), so the cache is
bounded in bytes and emptied whenever the worker runs out of tasks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from localsched.transport.shm import BlobRef, load

__all__ = ["READS_INPUTS_ONLY", "SharedInputs", "reads_inputs_only"]

#: Set to True on a task function (``setattr``) that never changes its inputs.
READS_INPUTS_ONLY = "__localsched_reads_inputs_only__"

#: Bytes of blobs one worker keeps unpickled for read-only tasks.
DEFAULT_MAX_BYTES = 256 * 2**20


def reads_inputs_only(function: Any) -> bool:
    """Whether ``function`` is marked as leaving its inputs unchanged."""
    return getattr(function, READS_INPUTS_ONLY, False) is True


class SharedInputs:
    """Least recently used values of shared-memory blobs, up to ``max_bytes``.

    Thread-safe: the task threads of a worker share one. Two threads loading the
    same blob at once both unpickle it (the lock is not held while loading).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict[BlobRef, object] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        #: Loads answered from the cache, and loads that unpickled.
        self.hits = 0
        self.misses = 0

    def load(self, payload: Any) -> object:
        """The value of ``payload`` (as :func:`~localsched.transport.shm.load`)."""
        if type(payload) is not BlobRef:
            return load(payload)  # inline: small, cheap to unpickle again
        with self._lock:
            if payload in self._values:
                self._values.move_to_end(payload)
                self.hits += 1
                return self._values[payload]
        value = load(payload)
        with self._lock:
            self.misses += 1
            if payload.nbytes <= self.max_bytes and payload not in self._values:
                self._values[payload] = value
                self._nbytes += payload.nbytes
                while self._nbytes > self.max_bytes:
                    ref, _ = self._values.popitem(last=False)
                    self._nbytes -= ref.nbytes
        return value

    def clear(self) -> None:
        """Forget every value (their mappings go when nothing else uses them)."""
        with self._lock:
            self._values.clear()
            self._nbytes = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def nbytes(self) -> int:
        """Bytes of the blobs held."""
        return self._nbytes
