"""Bad input gets a clear error, changes nothing, and the cluster goes on.

The core's rejection of bad graphs is tested on the state machine
(``tests/scheduler/test_stimuli.py``); here the same cases go through a real
client, as a user meets them.
"""

from __future__ import annotations

import logging
import threading

import pytest

from localsched import FutureCancelledError, SchedulerPlugin, WorkerPlugin
from tests.runtime.helpers import DEADLINE, identity

pytestmark = pytest.mark.timeout(60)


def _task_keys(client):
    cluster = client.cluster
    return cluster.runtime.call(lambda: set(cluster.scheduler.tasks)).result(
        timeout=DEADLINE
    )


def _assert_cluster_goes_on(client):
    assert client.submit(identity, 42, pure=False).result(timeout=DEADLINE) == 42


def test_unpicklable_argument_fails_at_submit(client):
    before = _task_keys(client)
    with pytest.raises(
        TypeError,
        match=r"serialize the arguments of 'identity': .*pickle '_thread\.lock'",
    ):
        client.submit(identity, threading.Lock())
    assert _task_keys(client) == before
    _assert_cluster_goes_on(client)


def test_unpicklable_function_fails_at_submit(client):
    lock = threading.Lock()

    def uses_a_lock(x):
        with lock:
            return x

    before = _task_keys(client)
    with pytest.raises(
        TypeError,
        match=r"Could not serialize the function 'uses_a_lock': .*pickle '_thread",
    ):
        client.submit(uses_a_lock, 1)
    with pytest.raises(TypeError, match=r"pickle '_thread\.lock'"):
        client.map(uses_a_lock, range(3))
    assert _task_keys(client) == before
    _assert_cluster_goes_on(client)


def test_graph_with_a_cycle_is_refused(client):
    before = _task_keys(client)
    with pytest.raises(RuntimeError, match="Cycle detected"):
        client.get({"a": (identity, "b"), "b": (identity, "a")}, "a")
    assert _task_keys(client) == before
    _assert_cluster_goes_on(client)


def test_asking_for_a_key_not_in_the_graph_is_refused(client):
    before = _task_keys(client)
    with pytest.raises(KeyError, match="'b' is not in the graph"):
        client.get({"a": (identity, 1)}, "b")
    assert _task_keys(client) == before
    _assert_cluster_goes_on(client)


def test_dependency_on_a_key_that_does_not_exist_is_cancelled(client):
    gone = client.submit(identity, "gone", pure=False)
    gone.result(timeout=DEADLINE)
    gone.release()
    before = _task_keys(client)
    future = client.submit(identity, gone)
    # As dask: computing on data that is gone cancels, "lost dependencies".
    with pytest.raises(FutureCancelledError, match="lost dependencies"):
        future.result(timeout=DEADLINE)
    assert future.status == "cancelled"
    assert _task_keys(client) <= before  # the refused task was not added
    _assert_cluster_goes_on(client)


@pytest.mark.parametrize("key", [[1, 2], object(), {"a": 1}, (1, [2])])
def test_key_of_a_wrong_type_is_refused(client, key):
    before = _task_keys(client)
    with pytest.raises(TypeError, match="keys must be str, bytes, int, float"):
        client.submit(identity, 1, key=key)
    assert _task_keys(client) == before
    _assert_cluster_goes_on(client)


class _RaisesEverywhere(SchedulerPlugin):
    name = "raises-everywhere"

    def __init__(self):
        self.calls = 0

    def _fail(self, *args, **kwargs):
        self.calls += 1
        raise ZeroDivisionError("plugin bug")

    update_graph = transition = add_worker = remove_worker = _fail
    add_client = remove_client = _fail


def test_plugin_hook_that_raises_is_logged_and_scheduling_goes_on(client, caplog):
    plugin = _RaisesEverywhere()
    client.register_plugin(plugin)
    try:
        with caplog.at_level(logging.ERROR, logger="localsched"):
            futures = client.map(identity, range(20), pure=False)
            assert client.gather(futures) == list(range(20))
        assert plugin.calls > 20
        failed = [r for r in caplog.records if "raises-everywhere" in r.getMessage()]
        assert failed, [r.getMessage() for r in caplog.records]
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in failed)
    finally:
        client.unregister_scheduler_plugin(plugin.name)
    _assert_cluster_goes_on(client)


class _WorkerPluginRaisingInTransition(WorkerPlugin):
    name = "worker-raises"

    def transition(self, key, start, finish, **kwargs):
        raise ZeroDivisionError("worker plugin bug")


def test_worker_plugin_transition_that_raises_does_not_break_tasks(client):
    client.register_plugin(_WorkerPluginRaisingInTransition())
    try:
        futures = client.map(identity, range(10), pure=False)
        assert client.gather(futures) == list(range(10))
    finally:
        client.unregister_worker_plugin("worker-raises")
    _assert_cluster_goes_on(client)
