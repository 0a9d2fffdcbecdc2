"""HeapSet: the queued tasks by priority, with lazy tombstones."""

from __future__ import annotations

import gc
import random

from localsched.scheduler.heapset import HeapSet
from localsched.scheduler.tasks import TaskGroup, TaskPrefix, TaskState

GROUP = TaskGroup("x", TaskPrefix("x"))


def task(key: object, priority: tuple[float, ...]) -> TaskState:
    ts = TaskState(key, "spec", GROUP)
    ts.priority = priority
    return ts


def test_pops_by_priority_then_insertion_whatever_the_order_of_adds():
    rng = random.Random(0)
    tasks = [task(f"t{i}", (0, 0, rng.randrange(20))) for i in range(200)]
    heap = HeapSet()
    for ts in tasks:
        heap.add(ts)
    expected = sorted(tasks, key=lambda ts: ts.priority)  # stable: insertion order
    assert heap.peekn(5) == expected[:5]
    assert [heap.pop() for _ in range(len(tasks))] == expected
    assert not heap


def test_discarded_tasks_are_skipped_and_membership_is_by_identity():
    a, b, c = task("a", (0, 0, 1)), task("b", (0, 0, 2)), task("c", (0, 0, 3))
    heap = HeapSet()
    for ts in (a, b, c):
        heap.add(ts)
    heap.discard(a)
    heap.discard(a)  # twice is harmless
    assert a not in heap
    assert b in heap
    assert task("b", (0, 0, 2)) not in heap  # same key, another task
    assert "b" not in heap
    assert heap.peek() is b
    assert heap.peekn(3) == [b, c]
    assert set(heap) == {b, c}
    assert len(heap) == 2


def test_a_task_added_again_keeps_its_first_place_among_equal_priorities():
    a, b = task("a", (0, 0, 0)), task("b", (0, 0, 0))
    heap = HeapSet()
    heap.add(a)
    heap.add(b)
    heap.discard(a)
    heap.add(a)  # its first entry is still there: a heap of tasks would revive it
    assert heap.peekn(2) == [a, b]
    assert heap.pop() is a
    assert heap.pop() is b
    assert not heap


def test_tombstones_are_rebuilt_away_and_entries_hold_no_task():
    heap = HeapSet()
    tasks = [task(i, (0, 0, i)) for i in range(1000)]
    for ts in tasks:
        heap.add(ts)
    for ts in tasks[:990]:
        heap.discard(ts)
    assert len(heap._run) + len(heap._heap) <= 2 * len(heap) + 64
    assert heap.sorted() == tasks[990:]
    # Entries are atoms: the collector need not walk them. It untracks a tuple
    # once its items are untracked, so an entry visited before its priority
    # tuple in one collection is untracked by the next.
    gc.collect()
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in heap._run)
