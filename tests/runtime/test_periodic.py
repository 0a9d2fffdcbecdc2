"""Periodic callbacks on the scheduler thread (used by adaptive and memory)."""

from __future__ import annotations

import threading

from localsched import LocalCluster
from tests.runtime.helpers import poll


def test_periodic_callback_runs_on_scheduler_thread_until_stopped() -> None:
    with LocalCluster(n_workers=0, processes=False) as cluster:
        runtime = cluster.runtime
        calls: list[str] = []

        def tick() -> None:
            calls.append(threading.current_thread().name)

        handle = runtime.add_periodic(0.01, tick, name="test-tick")
        assert poll(lambda: len(calls) >= 3)
        assert set(calls) == {"localsched-scheduler"}
        handle.stop()
        stopped_at = runtime.call(lambda: len(calls)).result(5)
        # A full scheduler turn later, nothing more was called.
        runtime.call(lambda: None).result(5)
        assert len(calls) == stopped_at


def test_periodic_callback_that_raises_keeps_its_schedule() -> None:
    with LocalCluster(n_workers=0, processes=False) as cluster:
        calls: list[int] = []

        def boom() -> None:
            calls.append(1)
            raise RuntimeError("boom")

        handle = cluster.runtime.add_periodic(0.01, boom)
        assert poll(lambda: len(calls) >= 3)
        handle.stop()
