"""A set ordered by task priority, for the ``queued`` tasks."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterator

from localsched.scheduler.tasks import TaskState

#: ``(priority, insertion counter)``: atoms only, so the garbage collector stops
#: tracking an entry once it has met it (an entry holding the task stayed
#: tracked: one more object per queued task for every full collection to walk).
_Entry = tuple[tuple[float, ...], int]


class HeapSet:
    """Set of tasks with O(log n) add and O(1) amortised peek/pop by priority.

    Entries ``(priority, insertion counter)`` live in one of two places: a sorted
    ``_run`` (a deque) that takes every entry greater than its last one, and a
    heap for the others. Tasks are usually queued in priority order (graph order
    within a submission, generations over time), so most entries go to the run,
    where add and pop are O(1) whatever the size; a heap pop costs O(log n) tuple
    comparisons, which made queuing cost more per task as graphs grew. The
    smallest entry is the smaller of the two fronts, so the order is exactly a
    single heap's.

    ``_owners`` maps each entry's counter to the task that made it. An entry is
    live while its task is a member (``_tasks``, by key): a discarded task's
    entries stay behind as tombstones, skipped lazily, and come back to life if
    the task is added again, exactly as a heap of ``(priority, counter, task)``
    entries would behave. Both parts are rebuilt when tombstones outnumber live
    entries, so memory stays linear.
    """

    __slots__ = ("_counter", "_heap", "_owners", "_run", "_tasks")

    def __init__(self) -> None:
        #: key -> member task (members are live tasks: one per key).
        self._tasks: dict[Hashable, TaskState] = {}
        self._owners: dict[int, TaskState] = {}
        self._heap: list[_Entry] = []
        self._run: deque[_Entry] = deque()
        #: The next entry's insertion counter (an int, not ``itertools.count``:
        #: compiled, ``next()`` is a call through the builtins module).
        self._counter = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __contains__(self, ts: object) -> bool:
        key = getattr(ts, "key", _NO_KEY)
        return key is not _NO_KEY and self._tasks.get(key) is ts

    def __iter__(self) -> Iterator[TaskState]:
        return iter(self._tasks.values())

    def add(self, ts: TaskState) -> None:
        key = ts.key
        tasks = self._tasks
        if tasks.get(key) is ts:
            return
        tasks[key] = ts
        counter = self._counter
        self._counter = counter + 1
        self._owners[counter] = ts
        entry = (ts.priority, counter)
        run = self._run
        if not run or run[-1] < entry:
            run.append(entry)
        else:
            heapq.heappush(self._heap, entry)

    def discard(self, ts: TaskState) -> None:
        key = ts.key
        tasks = self._tasks
        if tasks.get(key) is ts:
            del tasks[key]
            if len(self._owners) > 2 * len(tasks) + 64:
                self._rebuild()

    def remove(self, ts: TaskState) -> None:
        if ts not in self:
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

    def _pop_top(self) -> TaskState:
        """Remove the smallest entry (there must be one); return its task."""
        run = self._run
        heap = self._heap
        if run and not (heap and heap[0] < run[0]):
            return self._owners.pop(run.popleft()[1])
        return self._owners.pop(heapq.heappop(heap)[1])

    def _live_top(self) -> TaskState | None:
        """Drop tombstones off the top, as one heap would; the top task or None."""
        tasks = self._tasks
        owners = self._owners
        run = self._run
        heap = self._heap
        while True:
            # _top(), inlined: this runs once per task handed out.
            if run:
                entry = heap[0] if heap and heap[0] < run[0] else run[0]
            elif heap:
                entry = heap[0]
            else:
                return None
            ts = owners[entry[1]]
            if tasks.get(ts.key) is ts:
                return ts
            self._pop_top()

    def peek(self) -> TaskState:
        ts = self._live_top()
        if ts is None:
            raise KeyError("peek into empty set")
        return ts

    def pop(self) -> TaskState:
        # _live_top then _pop_top, in one pass: this runs once per task
        # handed out, and each entry is looked up once, not twice.
        tasks = self._tasks
        owners = self._owners
        run = self._run
        heap = self._heap
        while True:
            if run and not (heap and heap[0] < run[0]):
                entry = run.popleft()
            elif heap:
                entry = heapq.heappop(heap)
            else:
                raise KeyError("pop from empty set")
            ts = owners.pop(entry[1])
            key = ts.key
            if tasks.get(key) is ts:
                del tasks[key]
                return ts

    def peekn(self, n: int) -> list[TaskState]:
        """The ``n`` highest-priority tasks, best first, without removing them.

        Takes the smallest entries off the two parts and puts the live ones
        back, dropping tombstones and duplicates for good (exactly what one heap
        would keep): O(n log size), never a walk over the whole heap.
        """
        if n <= 0 or not self._tasks:
            return []
        if n == 1:
            # The common case (one slot opened per finished task): the top live
            # entry, without taking it off and putting it back. ``_tasks`` is not
            # empty, so a live top exists (``_live_top`` is None only when empty).
            return [self._live_top()]  # type: ignore[list-item]
        tasks = self._tasks
        owners = self._owners
        from_run: list[_Entry] = []
        from_heap: list[_Entry] = []
        result: list[TaskState] = []
        seen: set[int] = set()
        run = self._run
        heap = self._heap
        while (run or heap) and len(result) < n:
            if run and not (heap and heap[0] < run[0]):
                entry = run.popleft()
                kept = from_run
            else:
                entry = heapq.heappop(heap)
                kept = from_heap
            ts = owners[entry[1]]
            if tasks.get(ts.key) is ts and id(ts) not in seen:
                seen.add(id(ts))
                result.append(ts)
                kept.append(entry)
            else:
                del owners[entry[1]]
        run.extendleft(reversed(from_run))
        for entry in from_heap:
            heapq.heappush(heap, entry)
        return result

    def sorted(self) -> list[TaskState]:
        return sorted(self._tasks.values(), key=lambda ts: ts.priority)

    def clear(self) -> None:
        self._tasks.clear()
        self._owners.clear()
        self._heap.clear()
        self._run.clear()

    def _rebuild(self) -> None:
        tasks = self._tasks
        # New dicts, not deletions: a dict keeps its largest table until it
        # is rebuilt, and a queue of a million tasks has 40 MB ones.
        owners = self._owners = {
            counter: ts
            for counter, ts in self._owners.items()
            if tasks.get(ts.key) is ts
        }
        self._tasks = dict(tasks)
        self._heap = [entry for entry in self._heap if entry[1] in owners]
        heapq.heapify(self._heap)
        self._run = deque(entry for entry in self._run if entry[1] in owners)


_NO_KEY = object()
