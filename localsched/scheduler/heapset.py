"""A set ordered by task priority, for the ``queued`` tasks."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from localsched.scheduler.tasks import TaskState


class HeapSet:
    """Set of tasks with O(log n) add and O(1) amortised peek/pop by priority.

    Discarded tasks stay in the heap as tombstones and are skipped lazily; the
    heap is rebuilt when tombstones outnumber live entries, so memory stays linear.
    """

    __slots__ = ("_counter", "_data", "_heap")

    def __init__(self) -> None:
        self._data: set[TaskState] = set()
        self._heap: list[tuple[tuple[float, ...], int, TaskState]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __contains__(self, ts: object) -> bool:
        return ts in self._data

    def __iter__(self) -> Iterator[TaskState]:
        return iter(self._data)

    def add(self, ts: TaskState) -> None:
        if ts not in self._data:
            self._data.add(ts)
            heapq.heappush(self._heap, (ts.priority, next(self._counter), ts))

    def discard(self, ts: TaskState) -> None:
        if ts in self._data:
            self._data.discard(ts)
            if len(self._heap) > 2 * len(self._data) + 64:
                self._rebuild()

    def remove(self, ts: TaskState) -> None:
        if ts not in self._data:
            raise KeyError(ts)
        self.discard(ts)

    def _clean_top(self) -> None:
        heap = self._heap
        data = self._data
        while heap and heap[0][2] not in data:
            heapq.heappop(heap)

    def peek(self) -> TaskState:
        self._clean_top()
        if not self._heap:
            raise KeyError("peek into empty set")
        return self._heap[0][2]

    def pop(self) -> TaskState:
        self._clean_top()
        if not self._heap:
            raise KeyError("pop from empty set")
        ts = heapq.heappop(self._heap)[2]
        self._data.discard(ts)
        return ts

    def peekn(self, n: int) -> list[TaskState]:
        """The ``n`` highest-priority tasks, best first, without removing them.

        Pops entries and pushes the live ones back, dropping tombstones and
        duplicates for good: O(n log size), never a walk over the whole heap.
        """
        if n <= 0 or not self._data:
            return []
        if n == 1:
            # The common case (one slot opened per finished task): the top live
            # entry, without popping and pushing it back.
            self._clean_top()
            return [self._heap[0][2]]
        heap = self._heap
        data = self._data
        kept: list[tuple[tuple[float, ...], int, TaskState]] = []
        result: list[TaskState] = []
        seen: set[TaskState] = set()
        while heap and len(result) < n:
            entry = heapq.heappop(heap)
            ts = entry[2]
            if ts in data and ts not in seen:
                seen.add(ts)
                result.append(ts)
                kept.append(entry)
        for entry in kept:
            heapq.heappush(heap, entry)
        return result

    def sorted(self) -> list[TaskState]:
        return sorted(self._data, key=lambda ts: ts.priority)

    def clear(self) -> None:
        self._data.clear()
        self._heap.clear()

    def _rebuild(self) -> None:
        data = self._data
        self._heap = [entry for entry in self._heap if entry[2] in data]
        heapq.heapify(self._heap)
