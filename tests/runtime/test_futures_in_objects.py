"""Futures inside pickled objects and dask collections, as in dask.distributed.

A future pickled inside another object (a persisted collection, a custom class)
comes back as a live future of the client where it is unpickled: the worker's
client in a task, which does not claim the key. ``wait``, ``futures_of``,
``cancel`` take dask collections, dicts and nested structures.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from localsched import Client, Event, FutureCancelledError, futures_of, wait
from tests.runtime.helpers import DEADLINE, poll

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
pytest.importorskip("numpy")

# Task functions defined here reach workers by value, not by import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Box:
    """A custom object holding a future."""

    def __init__(self, future: object) -> None:
        self.future = future


def result_in_box_plus_one(box: Box) -> object:
    return box.future.result(timeout=DEADLINE) + 1


def sum_of_array(x: object, event: Event | None = None) -> int:
    assert isinstance(x, da.Array)
    if event is not None:
        event.wait(DEADLINE)
    return int(x.sum().compute())


def _task_count(client: Client) -> int:
    cluster = client.cluster
    return cluster.runtime.call(lambda: len(cluster.scheduler.tasks)).result(
        timeout=DEADLINE
    )


def test_wait_and_futures_of_take_a_persisted_array_dicts_and_nesting(client):
    y = da.ones((10, 10), chunks=(5, 10)).persist()
    done, not_done = wait(y, timeout=DEADLINE)
    assert len(done) == 2
    assert not not_done
    assert {f.key for f in futures_of(y)} == {f.key for f in done}
    assert len(futures_of({"a": [y, (y,)]})) == 2
    assert len(wait({"a": [y]}, timeout=f"{DEADLINE}s").done) == 2
    assert futures_of([da.Array]) == []  # a class is not a collection


def test_wait_names_a_misplaced_argument(client):
    x, y = client.map(abs, [-1, -2])
    with pytest.raises(TypeError, match="wait expects a list"):
        wait(x, y)  # type: ignore[arg-type]


def test_persisted_array_passed_to_submit_computes_in_the_task(client):
    x = da.arange(10, chunks=(5,)).persist()
    assert client.submit(sum_of_array, x).result(timeout=DEADLINE) == 45


def test_future_inside_a_custom_object_is_a_live_future_in_the_task(client):
    x = client.submit(sum, [1, 2])
    assert client.submit(result_in_box_plus_one, Box(x)).result(DEADLINE) == 4


def test_scattered_object_holding_a_future_comes_back_bound_to_the_client(client):
    x = client.submit(sum, [3, 4])
    box = client.gather(client.scatter(Box(x)))
    assert box.future.client is client
    assert box.future.result(timeout=DEADLINE) == 7


def test_cancel_takes_a_persisted_collection(client):
    y = da.ones((4,), chunks=(2,)).persist()
    client.cancel(y)
    assert {f.status for f in futures_of(y)} == {"cancelled"}


def test_task_client_does_not_keep_the_keys_of_unpickled_futures(client):
    # dask/distributed#7498: whoever submitted the collection keeps it alive.
    event = Event(client=client)
    before = _task_count(client)
    future = client.submit(sum_of_array, da.arange(10, chunks=(4,)).persist(), event)
    assert poll(lambda: _task_count(client) <= before + 1)
    event.set()
    with pytest.raises(FutureCancelledError, match="lost dependencies"):
        future.result(timeout=DEADLINE)


def test_dask_get_scheduler_is_the_current_clients_get(client):
    assert dask.base.get_scheduler() == client.get
    with Client(client.cluster) as second:
        assert dask.base.get_scheduler() == second.get
    assert dask.base.get_scheduler() == client.get
