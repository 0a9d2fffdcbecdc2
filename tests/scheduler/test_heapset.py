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
    # In priority order (the run), then lower priorities (the heap).
    tasks = [task(i, (0, 1, i)) for i in range(1000)]
    earlier = [task(-i, (0, 0, -i)) for i in range(1, 501)]
    for ts in tasks + earlier:
        heap.add(ts)
    assert heap._heap
    assert len(heap._run) - heap._head == 1000
    for ts in tasks[:990] + earlier[:495]:
        heap.discard(ts)
    assert heap._entries() <= 2 * len(heap) + 64
    members = earlier[495:][::-1] + tasks[990:]
    assert heap.sorted() == members
    assert [heap.pop() for _ in range(len(heap))] == members
    # Heap entries are atoms: the collector need not walk them. It untracks a
    # tuple once its items are untracked, so an entry visited before its
    # priority tuple in one collection is untracked by the next.
    for ts in earlier[:100]:
        heap.add(ts)
    gc.collect()
    gc.collect()
    assert heap._heap
    assert not any(gc.is_tracked(entry) for entry in heap._heap)


def test_the_run_is_compacted_and_keeps_no_task_it_handed_out():
    heap = HeapSet()
    tasks = [task(i, (0, 0, i)) for i in range(5000)]
    for ts in tasks:
        heap.add(ts)
    popped = [heap.pop() for _ in range(3000)]
    assert popped == tasks[:3000]
    assert len(heap._run) < 5000  # compacted
    assert not any(ts in heap._run for ts in popped)
    heap.add(task("late", (0, 0, 10_000)))
    heap.add(task("early", (0, 0, -1)))
    assert heap.peekn(3) == [heap.peek(), tasks[3000], tasks[3001]]
    assert heap.peek().key == "early"
    assert [ts.key for ts in heap.peekn(2)] == ["early", 3000]
    rest = [heap.pop().key for _ in range(len(heap))]
    assert rest == ["early", *range(3000, 5000), "late"]
    assert heap._run == []
    assert heap._head == 0


def test_peekn_gives_the_live_tasks_of_both_parts_in_order_and_keeps_them():
    rng = random.Random(1)
    heap = HeapSet()
    tasks = [task(i, (0, 0, rng.randrange(50))) for i in range(300)]
    for ts in tasks:
        heap.add(ts)
    for ts in rng.sample(tasks, 100):
        heap.discard(ts)
    heap.add(tasks[0])  # maybe a revived entry, maybe a new one
    members = sorted(heap, key=lambda ts: ts.priority)
    for n in (2, 7, 50, 400):
        assert [ts.priority for ts in heap.peekn(n)] == [
            ts.priority for ts in members[:n]
        ]
    assert len(heap) == len(members)
    assert [ts.priority for ts in (heap.pop() for _ in members)] == [
        ts.priority for ts in members
    ]
