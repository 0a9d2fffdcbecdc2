"""A set ordered by task priority, for the ``queued`` tasks."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from localsched.scheduler.tasks import TaskState

#: A heap entry: ``(priority, insertion counter)``. Atoms only, so the garbage
#: collector stops tracking an entry once it has met it.
_Entry = tuple[tuple[float, ...], int]

#: Popped slots at the front of the run compacted away from this many on.
_COMPACT_FROM = 1024


class HeapSet:
    """Set of tasks with O(log n) add and O(1) amortised peek/pop by priority.

    Entries, ordered by ``(priority, insertion counter)``, live in one of two
    places: a sorted run that takes every entry greater than its last one, and
    a heap for the others. Tasks are usually queued in priority order (graph
    order within a submission, generations over time), so most entries go to
    the run, where add and pop are O(1) whatever the size; a heap pop costs
    O(log n) tuple comparisons, which made queuing cost more per task as graphs
    grew. The smallest entry is the smaller of the two fronts, so the order is
    exactly a single heap's.

    The run is two lists read from ``_head`` on: the tasks (``_run``) and their
    counters (``_run_counters``). It holds the task itself, not an entry
    object: no tuple to build and free and no counter-to-task table per queued
    task, and list slots rather than method calls in the compiled core. The
    heap holds atoms, ``(priority, counter)``, and ``_owners`` maps a heap
    entry's counter to its task.

    An entry is live while its task is a member (``_tasks``): a
    discarded task's entries stay behind as tombstones, skipped lazily, and
    come back to life if the task is added again, exactly as a heap of
    ``(priority, counter, task)`` entries would behave. Both parts are rebuilt
    when tombstones outnumber live entries, so memory stays linear.
    """

    __slots__ = (
        "_counter",
        "_head",
        "_heap",
        "_owners",
        "_run",
        "_run_counters",
        "_tasks",
    )

    def __init__(self) -> None:
        #: The members, in the order they were added (a task hashes by its
        #: serial number: one slot after the other, not at random places).
        self._tasks: dict[TaskState, None] = {}
        #: The run's tasks, in entry order from ``_head`` on (None: popped).
        self._run: list[TaskState | None] = []
        #: The insertion counter of each run entry, parallel to ``_run``.
        self._run_counters: list[int] = []
        #: Index of the run's first entry.
        self._head = 0
        #: The heap's entries, and the task of each (by counter).
        self._heap: list[_Entry] = []
        self._owners: dict[int, TaskState] = {}
        #: The next entry's insertion counter (an int, not ``itertools.count``:
        #: compiled, ``next()`` is a call through the builtins module).
        self._counter = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __contains__(self, ts: object) -> bool:
        return isinstance(ts, TaskState) and ts in self._tasks

    def __iter__(self) -> Iterator[TaskState]:
        return iter(self._tasks)

    def _entries(self) -> int:
        """How many entries, live or not, the two parts hold."""
        return len(self._run) - self._head + len(self._heap)

    def add(self, ts: TaskState) -> None:
        tasks = self._tasks
        if ts in tasks:
            return
        tasks[ts] = None
        counter = self._counter
        self._counter = counter + 1
        run = self._run
        if len(run) == self._head:
            # An empty run starts again at the front of its lists.
            if run:
                run.clear()
                self._run_counters.clear()
                self._head = 0
        else:
            last = run[-1]
            assert last is not None  # slots before the head only are emptied
            # The entry goes after the run's last (any task there, live or
            # not: a tombstone keeps its place) unless its priority is lower;
            # a later counter breaks a tie in its favour.
            if ts.priority < last.priority:
                heapq.heappush(self._heap, (ts.priority, counter))
                self._owners[counter] = ts
                return
        run.append(ts)
        self._run_counters.append(counter)

    def discard(self, ts: TaskState) -> None:
        tasks = self._tasks
        if ts in tasks:
            del tasks[ts]
            if self._entries() > 2 * len(tasks) + 64:
                self._rebuild()

    def remove(self, ts: TaskState) -> None:
        if ts not in self:
            raise KeyError(ts)
        self.discard(ts)

    def _heap_before(self, index: int) -> bool:
        """Whether the heap's top entry comes before the run's at ``index``
        (the heap is not empty and ``index`` is in the run)."""
        top_priority, top_counter = self._heap[0]
        ts = self._run[index]
        assert ts is not None
        priority = ts.priority
        return top_priority < priority or (
            top_priority == priority and top_counter < self._run_counters[index]
        )

    def _take_top(self) -> TaskState | None:
        """Remove the smallest entry, live or not; its task, or None if empty."""
        run = self._run
        heap = self._heap
        head = self._head
        if head < len(run) and not (heap and self._heap_before(head)):
            ts = run[head]
            run[head] = None  # the run keeps no task it has handed out
            head += 1
            if head == len(run):
                run.clear()
                self._run_counters.clear()
                head = 0
            elif head >= _COMPACT_FROM and 2 * head >= len(run):
                del run[:head]
                del self._run_counters[:head]
                head = 0
            self._head = head
            return ts
        if heap:
            return self._owners.pop(heapq.heappop(heap)[1])
        return None

    def _top(self) -> TaskState | None:
        """The task of the smallest entry, live or not; None if there is none."""
        heap = self._heap
        head = self._head
        if head < len(self._run) and not (heap and self._heap_before(head)):
            return self._run[head]
        if heap:
            return self._owners[heap[0][1]]
        return None

    def _live_top(self) -> TaskState | None:
        """Drop tombstones off the top, as one heap would; the top task or None."""
        tasks = self._tasks
        while True:
            ts = self._top()
            if ts is None or ts in tasks:
                return ts
            self._take_top()

    def peek(self) -> TaskState:
        ts = self._live_top()
        if ts is None:
            raise KeyError("peek into empty set")
        return ts

    def pop(self) -> TaskState:
        tasks = self._tasks
        while True:
            ts = self._take_top()
            if ts is None:
                raise KeyError("pop from empty set")
            if ts in tasks:
                del tasks[ts]
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
        heap = self._heap
        owners = self._owners
        run = self._run
        from_heap: list[_Entry] = []
        result: list[TaskState] = []
        seen: set[int] = set()
        # The run is read in place from its head; the heap's smallest entries
        # are taken off and the live ones put back, dropping its tombstones.
        index = self._head
        while len(result) < n:
            if index < len(run) and not (heap and self._heap_before(index)):
                ts = run[index]
                assert ts is not None
                index += 1
                live = ts in tasks
            elif heap:
                entry = heapq.heappop(heap)
                ts = owners[entry[1]]
                live = ts in tasks
                if live and id(ts) not in seen:
                    from_heap.append(entry)
                else:
                    del owners[entry[1]]
            else:
                break
            if live and id(ts) not in seen:
                seen.add(id(ts))
                result.append(ts)
        for entry in from_heap:
            heapq.heappush(heap, entry)
        return result

    def sorted(self) -> list[TaskState]:
        return sorted(self._tasks, key=lambda ts: ts.priority)

    def clear(self) -> None:
        self._tasks.clear()
        self._owners.clear()
        self._heap.clear()
        self._run.clear()
        self._run_counters.clear()
        self._head = 0

    def _rebuild(self) -> None:
        tasks = self._tasks
        # New tables, not deletions: a dict keeps its largest table until it
        # is rebuilt, and a queue of a million tasks has 40 MB ones.
        self._tasks = dict(tasks)
        owners = self._owners = {
            counter: ts for counter, ts in self._owners.items() if ts in tasks
        }
        self._heap = [entry for entry in self._heap if entry[1] in owners]
        heapq.heapify(self._heap)
        run: list[TaskState | None] = []
        counters: list[int] = []
        for index in range(self._head, len(self._run)):
            ts = self._run[index]
            if ts is not None and ts in tasks:
                run.append(ts)
                counters.append(self._run_counters[index])
        self._run = run
        self._run_counters = counters
        self._head = 0
