"""Adaptive scaling on real worker processes: grow on a burst, shrink when idle,
retire gracefully (nothing recomputed), hysteresis, plugins see every change."""

from __future__ import annotations

import math
import operator
import threading
from datetime import timedelta

import pytest

from localsched import Client, LocalCluster, SchedulerPlugin
from localsched.deploy import Adaptive as DeployAdaptive
from localsched.deploy.adaptive import Adaptive
from tests.runtime.helpers import (
    DEADLINE,
    block,
    count_call,
    lines,
    poll,
    wait_for_file,
)


class WorkerChanges(SchedulerPlugin):
    """Records the add_worker/remove_worker hooks, in order."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def add_worker(self, scheduler, worker):
        self.changes.append(("add", worker))

    def remove_worker(self, scheduler, worker, **kwargs):
        self.changes.append(("remove", worker))


def n_workers(cluster: LocalCluster) -> int:
    return len(cluster.scheduler.workers)


def test_burst_grows_to_maximum_then_idle_shrinks_to_minimum(tmp_path):
    release = tmp_path / "release"
    changes = WorkerChanges()
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, plugins=[changes]) as cluster,
        Client(cluster) as client,
    ):
        adaptive = cluster.adapt(
            minimum=1,
            maximum=3,
            interval="50ms",
            wait_count=2,
            target_duration="100ms",
        )
        assert cluster.adaptive is adaptive
        assert "adaptive=1..3" in repr(cluster)
        try:
            futures = client.map(block, [str(release)] * 12, pure=False)
            assert poll(lambda: n_workers(cluster) == 3)
            # Never beyond maximum while the burst waits.
            assert poll(lambda: adaptive.last_target == 3)
            assert n_workers(cluster) == 3
        finally:
            release.touch()
        assert client.gather(futures) == [None] * 12
        assert poll(lambda: n_workers(cluster) == 1)
        statuses = [decision["status"] for _, decision in adaptive.log]
        assert statuses[0] == "up"
        assert "down" in statuses
        assert adaptive.summary()["minimum"] == 1
        assert adaptive.summary()["decisions"] == len(adaptive.log)
        adds = [w for what, w in changes.changes if what == "add"]
        removes = [w for what, w in changes.changes if what == "remove"]
        assert len(adds) == 3
        assert len(removes) == 2
        assert set(removes) | set(cluster.scheduler.workers) == set(adds)
    assert adaptive.state == "stopped"


def test_empty_cluster_starts_a_worker_for_work_and_retires_it_after():
    with (
        LocalCluster(n_workers=0, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        adaptive = cluster.adapt(minimum=0, maximum=2, interval="50ms", wait_count=2)
        assert client.submit(operator.add, 1, 2).result(timeout=DEADLINE) == 3
        assert poll(lambda: n_workers(cluster) == 0)
        assert [d["status"] for _, d in adaptive.log] == ["up", "down"]


def test_results_of_retired_workers_are_kept_and_never_recomputed(tmp_path):
    counts = str(tmp_path / "counts")
    with (
        LocalCluster(n_workers=3, threads_per_worker=1, validate=True) as cluster,
        Client(cluster) as client,
    ):
        addresses = list(cluster.scheduler.workers)
        small = [
            client.submit(count_call, counts, i, workers=[a], pure=False)
            for i, a in enumerate(addresses)
        ]
        # Over the inline threshold: results in shared-memory segments.
        large = [
            client.submit(count_call, counts, bytes(2**20) + bytes([i]), workers=[a])
            for i, a in enumerate(addresses)
        ]
        client.gather(small + large)
        assert len(lines(counts)) == 6

        adaptive = cluster.adapt(minimum=1, maximum=3, interval="50ms", wait_count=2)
        assert poll(lambda: n_workers(cluster) == 1)

        assert client.gather(small) == [0, 1, 2]
        assert [r[-1] for r in client.gather(large)] == [0, 1, 2]
        total = client.submit(sum, small)
        assert total.result(timeout=DEADLINE) == 3
        assert len(lines(counts)) == 6  # nothing ran twice
        assert adaptive.log[-1][1]["status"] == "down"


def test_retire_workers_lets_the_running_task_finish_then_hands_over(tmp_path):
    release, started = tmp_path / "release", str(tmp_path / "started")
    counts = str(tmp_path / "counts")
    changes = WorkerChanges()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, plugins=[changes]) as cluster,
        Client(cluster) as client,
    ):
        first, second = list(cluster.scheduler.workers)
        kept = client.submit(count_call, counts, "kept", workers=[first])
        assert kept.result(timeout=DEADLINE) == "kept"
        running = client.submit(block, str(release), started, "done", workers=[first])
        wait_for_file(started)
        retired: dict = {}
        retiring = threading.Thread(
            target=lambda: retired.update(client.retire_workers([first]))
        )
        retiring.start()
        try:
            assert poll(
                lambda: cluster.scheduler.workers[first].status == "closing_gracefully"
            )
            # No new work goes to the retiring worker.
            placed = client.submit(operator.neg, 1)
            assert placed.result(timeout=DEADLINE) == -1
            assert list(client.who_has([placed])[placed.key]) == [second]
        finally:
            release.touch()
        retiring.join(DEADLINE)
        assert not retiring.is_alive()
        assert list(retired) == [first]
        assert running.result(timeout=DEADLINE) == "done"
        assert kept.result(timeout=DEADLINE) == "kept"
        assert len(lines(counts)) == 1
        assert first not in cluster.scheduler.workers
        assert ("remove", first) in changes.changes


def test_one_low_reading_does_not_close_a_worker():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        adaptive = cluster.adapt(minimum=0, maximum=2, interval=0, wait_count=3)
        assert adaptive.state == "inactive"  # no timer: we drive it by hand
        assert adaptive.recommendations(1) == {"status": "same"}
        assert sum(adaptive.close_counts.values()) == 1
        # The load came back: the count starts over.
        assert adaptive.recommendations(2) == {"status": "same"}
        assert not adaptive.close_counts
        assert adaptive.recommendations(1) == {"status": "same"}
        assert adaptive.recommendations(1) == {"status": "same"}
        decision = adaptive.recommendations(1)
        assert decision["status"] == "down"
        assert len(decision["workers"]) == 1
        assert adaptive.recommendations(3) == {"status": "up", "n": 3}


def test_scale_stops_adapting_and_adapt_again_replaces(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        first = cluster.adapt(minimum=1, maximum=2, interval="20ms")
        second = cluster.adapt(minimum=2, maximum=2, interval="20ms")
        assert first.state == "stopped"
        assert second.state == "running"
        assert cluster.adaptive is second
        assert poll(lambda: n_workers(cluster) == 2)
        cluster.scale(1)
        assert second.state == "stopped"
        assert poll(lambda: n_workers(cluster) == 1)
        # A stopped Adaptive no longer brings the pool back to its minimum of 2.
        cluster.runtime.call(lambda: None).result(DEADLINE)
        assert cluster.runtime.call(cluster._count_staying_workers).result() == 1
        assert "adaptive" not in repr(cluster)


def test_adapt_parameters_as_dask_takes_them():
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False) as cluster:
        adaptive = cluster.adapt(interval="250ms", target_duration="2 s", maximum=None)
        assert isinstance(adaptive, DeployAdaptive)
        assert adaptive.interval == 0.25
        assert adaptive.target_duration == 2.0
        # dask's default: no bound (the work bounds the target).
        assert adaptive.maximum == math.inf
        assert cluster.default_maximum_workers() >= 1
        assert adaptive.minimum == 0
        assert adaptive.wait_count == 3
        with pytest.raises(ValueError, match="maximum"):
            cluster.adapt(maximum=2.5)
        with pytest.raises(ValueError, match="minimum"):
            cluster.adapt(minimum=3, maximum=2)
        unbounded = cluster.adapt(maximum=math.inf, interval=0)
        assert unbounded.maximum == math.inf
        assert "state=inactive" in repr(unbounded)
        as_timedelta = cluster.adapt(interval=timedelta(milliseconds=500))
        assert as_timedelta.interval == 0.5
    assert Adaptive is DeployAdaptive


def test_retiring_worker_hands_its_queued_tasks_to_the_others(tmp_path):
    release = tmp_path / "release"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        first, _ = list(cluster.scheduler.workers)
        # Both are running from the moment they are listed (WorkerAdded); only
        # a pause by the memory monitor could make one an invalid place (loose
        # restrictions would then send the queue to the other worker).
        assert all(ws.status == "running" for ws in cluster.scheduler.workers.values())
        # Stealing off: it may move the queue to the idle worker before the
        # retirement does, which is what this test is about.
        state = cluster.scheduler.state
        cluster.runtime.call(lambda: setattr(state.stealing, "enabled", False)).result(
            DEADLINE
        )
        futures = [
            client.submit(
                block,
                str(release),
                str(tmp_path / f"started-{i}"),
                i,
                workers=[first],
                allow_other_workers=True,
                pure=False,
            )
            for i in range(4)
        ]
        wait_for_file(tmp_path / "started-0")
        # The first task runs once its own submit is handled; the other three
        # may still be in the scheduler's inbox (a loaded machine). A call runs
        # after every event posted before it, so it sees all four placed.
        on_first = cluster.runtime.call(
            lambda: len(cluster.scheduler.workers[first].processing)
        ).result(DEADLINE)
        assert on_first == 4
        retiring = threading.Thread(target=client.retire_workers, args=([first],))
        retiring.start()
        try:
            # Only the executing task stays behind; the queue moves at once.
            assert poll(lambda: len(cluster.scheduler.workers[first].processing) == 1)
        finally:
            release.touch()
        retiring.join(DEADLINE)
        assert client.gather(futures) == [0, 1, 2, 3]
        first_pid = (tmp_path / "started-0").read_text()
        assert all(
            (tmp_path / f"started-{i}").read_text() != first_pid for i in (1, 2, 3)
        )
        assert first not in cluster.scheduler.workers


def test_adapt_refuses_a_closed_cluster():
    cluster = LocalCluster(n_workers=0, processes=False)
    cluster.close()
    with pytest.raises(RuntimeError, match="closed"):
        cluster.adapt()


def test_worker_key_groups_retire_together():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        # Both workers are on this host: one group, and closing it would leave
        # fewer than the target of 1.
        grouped = cluster.adapt(
            minimum=0,
            maximum=2,
            interval=0,
            wait_count=1,
            worker_key=lambda ws: ws.host,
        )
        assert grouped.recommendations(1) == {"status": "same"}
        assert grouped.recommendations(0)["workers"] == sorted(cluster.workers, key=str)
        single = cluster.adapt(minimum=0, maximum=2, interval=0, wait_count=1)
        assert len(single.recommendations(1)["workers"]) == 1


def test_scale_down_twice_in_a_row_does_not_count_retiring_workers(tmp_path):
    release = tmp_path / "release"
    with (
        LocalCluster(n_workers=3, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        # Busy workers retire only after their task: the second scale() runs
        # while the first one's workers are still retiring.
        futures = [
            client.submit(block, str(release), None, i, workers=[a], pure=False)
            for i, a in enumerate(cluster.scheduler.workers)
        ]
        try:
            assert poll(
                lambda: all(ws.processing for ws in cluster.scheduler.workers.values())
            )
            cluster.scale(2)
            cluster.scale(1)
            assert cluster.runtime.call(cluster._count_staying_workers).result() == 1
        finally:
            release.touch()
        assert client.gather(futures) == [0, 1, 2]
        assert poll(lambda: n_workers(cluster) == 1)


def test_adaptive_stops_once_workers_cannot_start(caplog):
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False) as cluster:
        cluster._restarts.failure = "5 worker processes in a row died while starting"
        adaptive = cluster.adapt(minimum=1, maximum=2, interval="20ms")
        assert poll(lambda: adaptive.state == "stopped")
        assert "died while starting" in caplog.text
        assert not cluster.runtime.workers
