"""``wait`` and ``as_completed`` over futures of real tasks."""

from __future__ import annotations

import operator

import pytest

from localsched import FutureCancelledError, as_completed, wait
from tests.runtime.helpers import DEADLINE, block, raise_value_error, wait_for_file

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def release(tmp_path):
    """A file that unblocks ``block`` tasks; created at teardown at the latest."""
    path = str(tmp_path / "release")
    yield path
    open(path, "w").close()


def test_wait_all_completed(client):
    futures = client.map(operator.neg, range(5))
    done, not_done = wait(futures, timeout=DEADLINE)
    assert done == set(futures)
    assert not_done == set()
    assert all(f.status == "finished" for f in futures)


def test_wait_all_completed_counts_errors_as_done(client):
    good = client.submit(operator.neg, 1)
    bad = client.submit(raise_value_error, 1)
    done, not_done = wait([good, bad], timeout=DEADLINE)
    assert done == {good, bad}
    assert not not_done
    assert bad.status == "error"


def test_wait_first_completed_returns_before_a_blocked_task(client, release):
    blocked = client.submit(block, release, None, pure=False)
    quick = client.submit(operator.neg, 5)
    done, not_done = wait([blocked, quick], return_when="FIRST_COMPLETED")
    assert quick in done
    assert not_done == {blocked}
    assert not blocked.done()


def test_wait_timeout_raises_timeout_error(client, release):
    blocked = client.submit(block, release, None, pure=False)
    with pytest.raises(TimeoutError):
        wait([blocked], timeout=0.2)
    assert not blocked.done()


def test_as_completed_yields_each_future_once(client):
    futures = client.map(operator.neg, range(6))
    seen = list(as_completed(futures))
    assert sorted(seen, key=lambda f: f.key) == sorted(futures, key=lambda f: f.key)
    assert all(f.done() for f in seen)


def test_as_completed_yields_in_completion_order(client, tmp_path):
    release = str(tmp_path / "release")
    started = str(tmp_path / "started")
    slow = client.submit(block, release, started, "slow", pure=False)
    wait_for_file(started)
    fast = client.submit(operator.neg, 7)
    iterator = as_completed([slow, fast])
    try:
        assert next(iterator) is fast
    finally:
        open(release, "w").close()
    assert next(iterator) is slow
    with pytest.raises(StopIteration):
        next(iterator)


def test_as_completed_with_results(client):
    futures = client.map(operator.mul, range(5), range(5))
    pairs = list(as_completed(futures, with_results=True))
    assert sorted(result for _, result in pairs) == [0, 1, 4, 9, 16]
    assert all(future.result() == result for future, result in pairs)


def test_as_completed_with_results_raises_task_errors_by_default(client):
    bad = client.submit(raise_value_error, 2)
    with pytest.raises(ValueError, match="bad 2"):
        list(as_completed([bad], with_results=True))


def test_as_completed_raise_errors_false_yields_the_exception(client):
    good = client.submit(operator.neg, 3)
    bad = client.submit(raise_value_error, 3)
    pairs = dict(as_completed([good, bad], with_results=True, raise_errors=False))
    assert pairs[good] == -3
    # dask yields the error as a (type, exception, traceback) triple
    typ, exception, _ = pairs[bad]
    assert typ is ValueError
    assert isinstance(exception, ValueError)
    assert str(exception) == "bad 3"


def test_as_completed_with_results_yields_cancellation_without_raising(client, release):
    blocked = client.submit(block, release, None, pure=False)
    iterator = as_completed([blocked], with_results=True)
    blocked.cancel()
    ((future, result),) = list(iterator)
    assert future is blocked
    assert isinstance(result, FutureCancelledError)


def test_exception_of_a_cancelled_future_is_none_as_in_dask(client, release):
    blocked = client.submit(block, release, None, pure=False)
    blocked.cancel()
    # dask: exception() answers None unless the task erred; result() raises.
    assert blocked.exception(timeout=DEADLINE) is None
    assert blocked.traceback(timeout=DEADLINE) is None
    assert blocked.cancelled()
    with pytest.raises(FutureCancelledError):
        blocked.result(timeout=DEADLINE)


def test_as_completed_add_while_iterating(client):
    first = client.submit(operator.add, 0, 1)
    iterator = as_completed([first])
    results = []
    for future in iterator:
        value = future.result()
        results.append(value)
        if value < 5:
            iterator.add(client.submit(operator.add, value, 1))
    assert results == [1, 2, 3, 4, 5]
    assert iterator.is_empty()


def test_as_completed_batches_cover_every_future(client, tmp_path):
    release = str(tmp_path / "release")
    started = str(tmp_path / "started")
    slow = client.submit(block, release, started, "slow", pure=False)
    wait_for_file(started)
    quick = client.map(operator.neg, range(4))
    wait(quick, timeout=DEADLINE)
    batches = as_completed([slow, *quick]).batches()
    try:
        first = next(batches)
    finally:
        open(release, "w").close()
    assert set(first) == set(quick)
    rest = [f for batch in batches for f in batch]
    assert rest == [slow]


def test_as_completed_batches_with_results(client):
    futures = client.map(operator.neg, range(4))
    batches = list(as_completed(futures, with_results=True).batches())
    pairs = [pair for batch in batches for pair in batch]
    assert sorted(result for _, result in pairs) == [-3, -2, -1, 0]


def test_as_completed_yields_a_future_added_twice_twice(client):
    x = client.submit(operator.add, 1, 1)
    iterator = as_completed()
    iterator.add(x)
    iterator.add(x)
    assert [next(iterator), next(iterator)] == [x, x]
    with pytest.raises(StopIteration):
        next(iterator)


def test_as_completed_takes_a_duration_string_and_refuses_non_futures(client):
    assert list(as_completed([client.submit(abs, -3)], timeout=f"{DEADLINE}s"))
    with pytest.raises(TypeError, match="must be a future"):
        as_completed([1, 2, 3])
