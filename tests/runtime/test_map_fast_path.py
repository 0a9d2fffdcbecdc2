"""``client.map``'s fast path for plain arguments (``graph.PlainCalls``), and the
futures it makes in one go: same keys and results as the general path,
errors of one element, duplicates, release."""

from __future__ import annotations

import gc
import operator
import threading

import numpy as np
import pytest

from localsched.client.graph import (
    PAUSE_GC_FROM,
    PLAIN_LIMIT,
    FunctionCache,
    PlainCalls,
    collector_paused,
)
from localsched.transport import pickling
from tests.runtime.helpers import DEADLINE, poll

pytestmark = pytest.mark.timeout(60)

PLAIN_VALUES = [0, -5, 2**70, 1.5, float("inf"), "text", "", b"raw", None, True]


def scaled(x: object, factor: int = 1) -> object:
    return (x, factor)


def test_plain_call_pickles_to_the_bytes_of_the_general_path():
    # Keys hash these bytes: equal bytes make map's keys equal submit's.
    calls = PlainCalls.of(FunctionCache(), scaled, {"factor": 3}, actor=False)
    assert calls is not None
    for value in PLAIN_VALUES:
        made = calls.spec((value, "second"), pure=True)
        assert made is not None
        spec, key = made
        assert spec.args == pickling.dumps(((value, "second"), {"factor": 3}))
        assert spec.dependencies == ()
        assert key is not None
        assert key.startswith("scaled-")


def test_calls_outside_the_fast_path_are_left_to_the_general_one():
    calls = PlainCalls.of(FunctionCache(), scaled, {}, actor=False)
    assert calls is not None
    assert calls.spec(([1, 2],), pure=True) is None  # a container may hide a future
    assert calls.spec(("x" * (PLAIN_LIMIT + 1),), pure=True) is None  # large
    assert calls.spec((np.int64(1),), pure=True) is None  # not an exact plain type
    # Keyword arguments are shared by every call: checked once, for the map.
    assert PlainCalls.of(FunctionCache(), scaled, {"factor": [1]}, False) is None
    lock = threading.Lock()
    assert PlainCalls.of(FunctionCache(), lambda: lock, {}, False) is None


def test_map_keys_and_results_equal_submits(client):
    mapped = client.map(scaled, PLAIN_VALUES, factor=2)
    submitted = [client.submit(scaled, v, factor=2) for v in PLAIN_VALUES]
    assert [f.key for f in mapped] == [f.key for f in submitted]
    assert client.gather(mapped) == [(v, 2) for v in PLAIN_VALUES]
    impure = client.map(scaled, [1, 1], pure=False)
    assert impure[0].key != impure[1].key
    assert impure[0].key.startswith("scaled-")
    assert client.gather(impure) == [(1, 1), (1, 1)]


def test_map_mixes_plain_and_general_calls(client):
    dependency = client.submit(operator.add, 20, 1)
    array = np.arange(3)
    big = "y" * (PLAIN_LIMIT * 2)
    futures = client.map(scaled, [1, dependency, [2, 3], big, array, "z"])
    results = client.gather(futures, errors="raise")
    assert results[0] == (1, 1)
    assert results[1] == (21, 1)
    assert futures[1].key != dependency.key
    assert results[2] == ([2, 3], 1)
    assert results[3] == (big, 1)
    assert np.array_equal(results[4][0], array)
    assert results[5] == ("z", 1)


def test_one_failing_element_fails_alone(client):
    futures = client.map(operator.truediv, [1, 2, 3], [1, 0, 4])
    assert futures[0].result(timeout=DEADLINE) == 1
    with pytest.raises(ZeroDivisionError):
        futures[1].result(timeout=DEADLINE)
    assert futures[2].result(timeout=DEADLINE) == 0.75
    assert [f.status for f in futures] == ["finished", "error", "finished"]


def test_map_with_a_key_prefix_and_with_given_keys(client):
    prefixed = client.map(scaled, [1, 2], key="prefixed")
    plain = client.map(scaled, [1, 2])
    assert [f.key for f in prefixed] == [
        "prefixed-" + f.key.rsplit("-", 1)[-1] for f in plain
    ]
    named = client.map(scaled, [5, 6], key=["named-a", "named-b"])
    assert [f.key for f in named] == ["named-a", "named-b"]
    assert client.gather(prefixed + named) == [(1, 1), (2, 1), (5, 1), (6, 1)]


def test_duplicates_share_a_key_held_until_the_last_future_goes(client):
    first, second = client.map(scaled, [7, 7])
    key = first.key
    assert second.key == key
    assert client._refcount[key] == 2
    assert client.gather([first, second]) == [(7, 1), (7, 1)]
    del first
    gc.collect()
    assert client._refcount[key] == 1
    assert second.result(timeout=DEADLINE) == (7, 1)
    del second
    gc.collect()
    assert key not in client._refcount
    assert poll(lambda: key not in client.cluster.scheduler.tasks)


def test_released_map_leaves_nothing_in_client_or_scheduler(client):
    futures = client.map(scaled, range(2_000), factor=5)
    keys = [f.key for f in futures]
    client.gather(futures)
    del futures
    gc.collect()
    assert not any(k in client._refcount or k in client._states for k in keys)
    tasks = client.cluster.scheduler.tasks
    assert poll(lambda: not any(k in tasks for k in keys))


def test_map_on_a_key_already_held_reuses_it(client):
    held = client.submit(scaled, 11)
    again = client.map(scaled, [11, 12])
    assert again[0].key == held.key
    assert again[0]._state is held._state
    assert client.gather(again) == [(11, 1), (12, 1)]
    assert held.result(timeout=DEADLINE) == (11, 1)


def test_a_large_map_pauses_the_collector_and_always_restores_it(client):
    seen: list[bool] = []
    with collector_paused(PAUSE_GC_FROM):
        seen.append(gc.isenabled())
    assert seen == [False]
    assert gc.isenabled()
    futures = client.map(scaled, range(PAUSE_GC_FROM))
    assert gc.isenabled()
    assert len({f.key for f in futures}) == PAUSE_GC_FROM
    client.cancel(futures)  # 10k tasks on a validating core: not worth waiting
    del futures
    calls = [*range(PAUSE_GC_FROM), threading.Lock()]
    with pytest.raises(TypeError, match="Could not serialize"):
        client.map(scaled, calls)
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused(PAUSE_GC_FROM):
            pass
        assert not gc.isenabled()  # it was off: left off
    finally:
        gc.enable()
