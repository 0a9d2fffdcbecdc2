"""The heap of idle workers picks exactly the worker the scan picks.

``decide_worker_rootish_queuing_enabled`` scans pools of up to
``placement.IDLE_HEAP_FROM`` workers and keeps larger ones in a lazily
invalidated heap (``state.idle_heap``). Two cores are driven with the same
random events, one always through the heap and one always through the scan:
every command, transition and invariant must agree at every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localsched.scheduler import events as ev
from localsched.scheduler import placement
from localsched.scheduler.commands import Command, ComputeTask
from localsched.scheduler.state import SchedulerState


@contextmanager
def _heap_from(size: int) -> Iterator[None]:
    old = placement.IDLE_HEAP_FROM
    placement.IDLE_HEAP_FROM = size
    try:
        yield
    finally:
        placement.IDLE_HEAP_FROM = old


class _Twin:
    """One core behind the heap, one behind the scan, fed the same events."""

    def __init__(self) -> None:
        self.heap = SchedulerState(validate=True)
        self.scan = SchedulerState(validate=True)
        #: key -> (worker, run_id) of the compute commands not answered yet.
        self.running: dict[object, tuple[str, int]] = {}
        self.heap_used = False

    def handle(self, *events: ev.StateEvent) -> list[Command]:
        with _heap_from(0):
            out = self.heap.handle(*events)
            self.heap_used |= self.heap.idle_heap is not None
        with _heap_from(10**9):
            expected = self.scan.handle(*events)
            assert self.scan.idle_heap is None
        assert out == expected
        assert [*self.heap.transition_log] == [*self.scan.transition_log]
        for cmd in out:
            if type(cmd) is ComputeTask:
                self.running[cmd.key] = (cmd.worker, cmd.run_id)
        return out


_step = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 4)),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("pause"), st.integers(0, 40)),
    st.tuples(st.just("resume"), st.integers(0, 40)),
    st.tuples(st.just("map"), st.integers(1, 60)),
    st.tuples(st.just("tree"), st.integers(2, 40)),
    st.tuples(st.just("finish"), st.integers(1, 30)),
    st.tuples(st.just("release"), st.just(0)),
)


@given(
    workers=st.lists(st.integers(1, 4), min_size=1, max_size=24),
    steps=st.lists(_step, max_size=40),
)
def test_heap_and_scan_place_every_task_alike(
    workers: list[int], steps: list[tuple[str, int]]
) -> None:
    twin = _Twin()
    twin.handle(
        *(
            ev.WorkerAdded(stimulus_id="add", address=f"w{i:02}", nthreads=n)
            for i, n in enumerate(workers)
        )
    )
    added = len(workers)
    graphs = 0
    wanted: list[object] = []
    for what, n in steps:
        addresses = sorted(twin.scan.workers)
        if what == "add":
            twin.handle(
                ev.WorkerAdded(stimulus_id="add", address=f"w{added:02}", nthreads=n)
            )
            added += 1
        elif what in ("remove", "pause", "resume") and addresses:
            address = addresses[n % len(addresses)]
            if what == "remove":
                twin.handle(ev.WorkerRemoved(stimulus_id="rm", address=address))
                twin.running = {
                    k: v for k, v in twin.running.items() if v[0] != address
                }
            else:
                status = "paused" if what == "pause" else "running"
                twin.handle(
                    ev.WorkerStatusChanged(
                        stimulus_id=what, address=address, status=status
                    )
                )
        elif what == "map":
            graphs += 1
            keys = [f"m{graphs}-{i}" for i in range(n)]
            wanted.extend(keys)
            twin.handle(
                ev.UpdateGraph(
                    stimulus_id=f"g{graphs}",
                    client="c",
                    tasks=dict.fromkeys(keys, "spec"),
                    keys=keys,
                )
            )
        elif what == "tree":
            graphs += 1
            leaves = [(f"t{graphs}", i) for i in range(n)]
            root = (f"t{graphs}-sum", 0)
            wanted.append(root)
            twin.handle(
                ev.UpdateGraph(
                    stimulus_id=f"g{graphs}",
                    client="c",
                    tasks=dict.fromkeys([*leaves, root], "spec"),
                    dependencies={root: leaves},
                    keys=[root],
                )
            )
        elif what == "finish":
            done = sorted(twin.running.items(), key=repr)[:n]
            for key, _ in done:
                del twin.running[key]
            twin.handle(
                *(
                    ev.TaskFinished(
                        stimulus_id="done",
                        key=key,
                        worker=worker,
                        run_id=run_id,
                        nbytes=8,
                        startstops=(("compute", 1.0, 1.001),),
                    )
                    for key, (worker, run_id) in done
                )
            )
        elif what == "release" and wanted:
            twin.handle(
                ev.ClientReleasesKeys(stimulus_id="rel", client="c", keys=wanted)
            )
            wanted = []


@pytest.mark.parametrize("heap_from", [0, placement.IDLE_HEAP_FROM])
def test_the_least_busy_lowest_address_gets_each_root(heap_from: int) -> None:
    state = SchedulerState(validate=True)
    state.handle(
        *(
            ev.WorkerAdded(stimulus_id="add", address=f"w{i:02}", nthreads=2)
            for i in range(20)
        )
    )
    keys = [f"x-{i}" for i in range(100)]  # root-ish: more than 2 x 40 threads
    with _heap_from(heap_from):
        commands = state.handle(
            ev.UpdateGraph(
                stimulus_id="map",
                client="c",
                tasks=dict.fromkeys(keys, "spec"),
                keys=keys,
            )
        )
    computes = [c for c in commands if type(c) is ComputeTask]
    # ceil(1.1 * 2) = 3 slots per worker: 60 go out, round after round, the
    # lowest address first at each load; the other 40 wait in the queue.
    assert [c.worker for c in computes] == [f"w{i:02}" for i in range(20)] * 3
    assert len(state.queued) == 40
    if heap_from == 0:
        assert state.idle_heap is not None


def test_stale_heap_is_dropped_not_grown() -> None:
    state = SchedulerState(validate=True)
    state.handle(
        *(
            ev.WorkerAdded(stimulus_id="add", address=f"w{i}", nthreads=1)
            for i in range(3)
        )
    )
    roots = [f"r-{i}" for i in range(10)]  # root-ish: more than 2 x 3 threads
    with _heap_from(0):
        commands = state.handle(
            ev.UpdateGraph(
                stimulus_id="roots",
                client="c",
                tasks=dict.fromkeys(roots, "spec"),
                keys=roots,
            )
        )
    assert state.idle_heap is not None
    # Tasks that are not root-ish never consult the heap, but each one's
    # re-classifications push entries: the heap must be dropped, not grow.
    sizes = []
    for i in range(300):
        finished: list[Command] = []
        for compute in [c for c in commands if type(c) is ComputeTask]:
            finished += state.handle(
                ev.TaskFinished(
                    stimulus_id="done",
                    key=compute.key,
                    worker=compute.worker,
                    run_id=compute.run_id,
                )
            )
        commands = finished + state.handle(
            ev.UpdateGraph(
                stimulus_id=f"g{i}", client="c", tasks={f"b{i}": "s"}, keys=[f"b{i}"]
            )
        )
        sizes.append(-1 if state.idle_heap is None else len(state.idle_heap))
    assert not state.queued  # all done
    assert len(state.tasks) == 310  # all wanted
    assert max(sizes) <= 4 * 3 + 65
    assert -1 in sizes
