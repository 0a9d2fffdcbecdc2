"""No future waits forever (issue 18, section 3).

If the scheduler thread dies of an unexpected exception, every pending future
and every later call fails at once with ``SchedulerStoppedError``, whose cause
is that exception, and ``close()`` still reaps every process and segment. A
client whose cluster was closed raises ``ClosedClientError`` (dask's name) at
``submit`` instead of returning a future that stays pending.

The core is broken on purpose by replacing ``Scheduler.handle`` with a
function that raises: what a bug in the core (an ``InvalidTransition``) or an
``OSError`` nobody caught would do.
"""

from __future__ import annotations

import concurrent.futures
import operator
import os
import threading
from pathlib import Path

import psutil
import pytest

from localsched import Client, Event, LocalCluster
from localsched.client.client import ClosedClientError
from localsched.errors import SchedulerStoppedError
from tests.runtime.helpers import (
    DEADLINE,
    block,
    make_bytes,
    poll,
    wait_for_file,
    wait_on_subtask,
)

pytestmark = pytest.mark.timeout(60)


class InjectedBug(Exception):
    """What the broken core raises."""


def _break_the_core(cluster: LocalCluster) -> InjectedBug:
    """Make the core raise at its next batch of events; the exception."""
    bug = InjectedBug("injected bug in the scheduler core")

    def handle(*events: object) -> list[object]:
        raise bug

    cluster.scheduler.handle = handle  # type: ignore[method-assign]
    return bug


def _segments(cluster: LocalCluster) -> list[str]:
    store = cluster.store
    try:
        names = os.listdir(store.directory)
    except FileNotFoundError:
        return []
    return [name for name in names if name.startswith(store.prefix)]


def _check_stopped_error(exc: BaseException, bug: InjectedBug) -> None:
    assert isinstance(exc, SchedulerStoppedError)
    assert isinstance(exc, ClosedClientError)  # dask code catching that sees it
    assert exc.__cause__ is bug
    assert "scheduler thread stopped" in str(exc)
    assert "injected bug in the scheduler core" in str(exc)


def test_scheduler_failure_fails_pending_futures_and_later_calls(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster, set_as_default=False)
    try:
        held = client.submit(make_bytes, 1 << 20)  # a segment close() must remove
        assert len(held.result(timeout=DEADLINE)) == 1 << 20
        pending = client.submit(block, release, started, pure=False)
        wait_for_file(started)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # A thread already waiting when the core breaks wakes too.
            waiting = pool.submit(pending.result, DEADLINE)
            bug = _break_the_core(cluster)
            trigger = client.submit(operator.neg, 1)  # an event the core meets
            with pytest.raises(SchedulerStoppedError) as raised:
                waiting.result(timeout=DEADLINE)
        _check_stopped_error(raised.value, bug)
        for future in (pending, trigger):
            with pytest.raises(SchedulerStoppedError) as raised:
                future.result(timeout=DEADLINE)
            _check_stopped_error(raised.value, bug)
        assert pending.status == "error"
        for later in (
            lambda: client.submit(operator.neg, 2),
            lambda: client.map(operator.neg, [3, 4]),
            lambda: client.scatter([1, 2]),
            lambda: client.gather([pending]),
            lambda: client.run(os.getpid),
            lambda: Client(cluster, set_as_default=False),
        ):
            with pytest.raises(SchedulerStoppedError) as raised:
                later()
            _check_stopped_error(raised.value, bug)
        assert _segments(cluster)
    finally:
        Path(release).touch()
        client.close()
        cluster.close()
    assert cluster.status == "closed"
    assert not _segments(cluster)  # the leak check covers processes and threads


def test_scheduler_failure_stops_the_workers_and_in_task_waits(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    cluster = LocalCluster(n_workers=1, threads_per_worker=2)
    client = Client(cluster, set_as_default=False)
    try:
        outer = client.submit(wait_on_subtask, release, started, pure=False)
        wait_for_file(started)  # the task's client waits for its subtask
        pids = [h.pid for h in cluster.runtime.workers.values()]
        bug = _break_the_core(cluster)
        client.submit(operator.neg, 1)
        with pytest.raises(SchedulerStoppedError) as raised:
            outer.result(timeout=DEADLINE)
        _check_stopped_error(raised.value, bug)

        def workers_gone() -> bool:
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        return False
                except psutil.NoSuchProcess:
                    pass
            return True

        # Before any close(): nothing in the worker waits for an answer.
        assert poll(workers_gone)
    finally:
        Path(release).touch()
        client.close()
        cluster.close()
    assert not _segments(cluster)


def test_submit_to_a_closed_cluster_raises_closed_client_error():
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster, set_as_default=False)
    assert client.submit(operator.neg, 1).result(timeout=DEADLINE) == -1
    cluster.close()
    for call in (
        lambda: client.submit(operator.neg, 2),
        lambda: client.map(operator.neg, [3]),
        lambda: client.scatter(5),
        lambda: Client(cluster, set_as_default=False),
    ):
        with pytest.raises(ClosedClientError, match="closed"):
            call()
    client.close()
    with pytest.raises(ClosedClientError, match="closed"):
        client.submit(operator.neg, 4)


def test_cluster_closed_from_a_done_callback_refuses_later_submits():
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster, set_as_default=False)
    closed = threading.Event()

    def close_cluster(_):
        cluster.close()
        closed.set()

    try:
        client.submit(operator.neg, 1).add_done_callback(close_cluster)
        assert closed.wait(DEADLINE)
        with pytest.raises(ClosedClientError):
            client.submit(operator.neg, 2)
    finally:
        client.close()
        cluster.close()


def test_done_callback_submitting_while_the_cluster_closes_gets_an_error(tmp_path):
    release = str(tmp_path / "release")
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster, set_as_default=False)
    outcome: list[object] = []
    answered = threading.Event()

    def resubmit(_):
        try:
            outcome.append(client.submit(operator.neg, 3))
        except Exception as exc:
            outcome.append(exc)
        answered.set()

    try:
        pending = client.submit(block, release, None, pure=False)
        pending.add_done_callback(resubmit)
        cluster.close()  # cancels ``pending``: its callback runs
        assert answered.wait(DEADLINE)
        assert isinstance(outcome[0], ClosedClientError), outcome
    finally:
        Path(release).touch()
        client.close()
        cluster.close()


def test_scheduler_failure_wakes_coordination_waits():
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster, set_as_default=False)
    try:
        event = Event("never-set", client=client)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(event.wait, DEADLINE)
            # Registered on the scheduler thread before the core breaks.
            assert poll(lambda: getattr(cluster.runtime, "_coordination", None))
            assert poll(lambda: cluster.runtime._coordination.waiters)
            bug = _break_the_core(cluster)
            client.submit(operator.neg, 1)
            with pytest.raises(SchedulerStoppedError) as raised:
                waiting.result(timeout=DEADLINE)
        _check_stopped_error(raised.value, bug)
        with pytest.raises(SchedulerStoppedError) as raised:
            event.wait(DEADLINE)
        _check_stopped_error(raised.value, bug)
    finally:
        client.close()
        cluster.close()
