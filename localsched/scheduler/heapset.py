"""A set ordered by task priority, for the ``queued`` tasks."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator

from localsched.scheduler.tasks import TaskState

_Entry = tuple[tuple[float, ...], int, TaskState]


class HeapSet:
    """Set of tasks with O(log n) add and O(1) amortised peek/pop by priority.

    Entries ``(priority, insertion counter, task)`` live in one of two places: a
    sorted ``_run`` (a deque) that takes every entry greater than its last one,
    and a heap for the others. Tasks are usually queued in priority order (graph
    order within a submission, generations over time), so most entries go to the
    run, where add and pop are O(1) whatever the size; a heap pop costs O(log n)
    tuple comparisons, which made queuing cost more per task as graphs grew. The
    smallest entry is the smaller of the two fronts, so the order is exactly a
    single heap's.

    Discarded tasks stay behind as tombstones and are skipped lazily; both are
    rebuilt when tombstones outnumber live entries, so memory stays linear.
    """

    __slots__ = ("_counter", "_data", "_heap", "_run")

    def __init__(self) -> None:
        self._data: set[TaskState] = set()
        self._heap: list[_Entry] = []
        self._run: deque[_Entry] = deque()
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
        # Sizes, not membership tests: hashing a task is a Python-level call.
        data = self._data
        n = len(data)
        data.add(ts)
        if len(data) != n:
            entry = (ts.priority, next(self._counter), ts)
            run = self._run
            if not run or run[-1] < entry:
                run.append(entry)
            else:
                heapq.heappush(self._heap, entry)

    def discard(self, ts: TaskState) -> None:
        data = self._data
        n = len(data)
        data.discard(ts)
        if len(data) != n and len(self._heap) + len(self._run) > 2 * n + 62:
            self._rebuild()

    def remove(self, ts: TaskState) -> None:
        if ts not in self._data:
            raise KeyError(ts)
        self.discard(ts)

    def _top(self) -> _Entry | None:
        """The smallest entry, live or not; None if there is none."""
        run = self._run
        heap = self._heap
        if run:
            if heap and heap[0] < run[0]:
                return heap[0]
            return run[0]
        return heap[0] if heap else None

    def _pop_top(self) -> _Entry:
        """Remove and return the smallest entry (there must be one)."""
        run = self._run
        heap = self._heap
        if run and not (heap and heap[0] < run[0]):
            return run.popleft()
        return heapq.heappop(heap)

    def _clean_top(self) -> None:
        """Drop tombstones while the smallest entry is one, as one heap would."""
        data = self._data
        while True:
            entry = self._top()
            if entry is None or entry[2] in data:
                return
            self._pop_top()

    def peek(self) -> TaskState:
        self._clean_top()
        entry = self._top()
        if entry is None:
            raise KeyError("peek into empty set")
        return entry[2]

    def pop(self) -> TaskState:
        self._clean_top()
        if self._top() is None:
            raise KeyError("pop from empty set")
        ts = self._pop_top()[2]
        self._data.discard(ts)
        return ts

    def peekn(self, n: int) -> list[TaskState]:
        """The ``n`` highest-priority tasks, best first, without removing them.

        Takes the smallest entries off the two parts and puts the live ones
        back, dropping tombstones and duplicates for good (exactly what one heap
        would keep): O(n log size), never a walk over the whole heap.
        """
        if n <= 0 or not self._data:
            return []
        if n == 1:
            # The common case (one slot opened per finished task): the top live
            # entry, without taking it off and putting it back.
            self._clean_top()
            return [self._top()[2]]  # type: ignore[index]
        data = self._data
        from_run: list[_Entry] = []
        from_heap: list[_Entry] = []
        result: list[TaskState] = []
        seen: set[TaskState] = set()
        run = self._run
        heap = self._heap
        while (run or heap) and len(result) < n:
            if run and not (heap and heap[0] < run[0]):
                entry = run.popleft()
                kept = from_run
            else:
                entry = heapq.heappop(heap)
                kept = from_heap
            ts = entry[2]
            if ts in data and ts not in seen:
                seen.add(ts)
                result.append(ts)
                kept.append(entry)
        run.extendleft(reversed(from_run))
        for entry in from_heap:
            heapq.heappush(heap, entry)
        return result

    def sorted(self) -> list[TaskState]:
        return sorted(self._data, key=lambda ts: ts.priority)

    def clear(self) -> None:
        self._data.clear()
        self._heap.clear()
        self._run.clear()

    def _rebuild(self) -> None:
        data = self._data
        self._heap = [entry for entry in self._heap if entry[2] in data]
        heapq.heapify(self._heap)
        self._run = deque(entry for entry in self._run if entry[2] in data)
