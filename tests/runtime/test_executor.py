"""``client.get_executor()`` against the standard library's executor behaviour:
``wait``, ``as_completed``, ``map`` (order, timeout, early close), ``cancel``,
``shutdown`` (wait, cancel_futures, no new work after it)."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

from tests.runtime.helpers import block, raise_value_error, wait_for_file


@pytest.fixture(scope="module")
def client(client):
    """The shared client, with its callback thread started before any test:
    that thread lives as long as the client, not one test."""
    client._callback_executor().submit(int).result()
    return client


def test_submit_result_and_exception(client):
    with client.get_executor() as executor:
        future = executor.submit(pow, 2, 10)
        assert isinstance(future, cf.Future)
        assert future.result(timeout=20) == 1024
        failing = executor.submit(raise_value_error, 3)
        assert isinstance(failing.exception(timeout=20), ValueError)
        with pytest.raises(ValueError, match="3"):
            failing.result()


def test_calls_are_impure_by_default(client):
    with client.get_executor() as executor:
        first, second = executor.submit(os.urandom, 8), executor.submit(os.urandom, 8)
        assert first.result(timeout=20) != second.result(timeout=20)
    with client.get_executor(pure=True) as executor:
        first, second = executor.submit(abs, -8), executor.submit(abs, -8)
        assert first.result(timeout=20) == second.result(timeout=20) == 8


def test_wait_and_as_completed(client, tmp_path):
    release = str(tmp_path / "release")
    with client.get_executor() as executor:
        quick = [executor.submit(abs, -i) for i in range(5)]
        slow = executor.submit(block, release, None, "slow")
        done, not_done = cf.wait(
            [*quick, slow], timeout=20, return_when="FIRST_COMPLETED"
        )
        assert done
        assert slow in not_done
        done, not_done = cf.wait(quick, timeout=20)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(quick, timeout=20)) == [
            0,
            1,
            2,
            3,
            4,
        ]
        with pytest.raises(cf.TimeoutError):
            next(cf.as_completed([slow], timeout=0.2))
        open(release, "w").close()
        assert slow.result(timeout=20) == "slow"


def test_map_order_timeout_and_early_close(client, tmp_path):
    release = str(tmp_path / "release")
    with client.get_executor() as executor:
        assert list(executor.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
        assert list(executor.map(abs, range(-3, 0), timeout=20)) == [3, 2, 1]
        results = executor.map(block, [release], [None], ["late"], timeout=0.3)
        with pytest.raises(cf.TimeoutError):
            next(results)
        open(release, "w").close()


def test_cancel_pending_call(client, tmp_path):
    release = str(tmp_path / "release")
    started = str(tmp_path / "started")
    with client.get_executor(workers=[sorted(client.scheduler.workers)[0]]) as ex:
        running = ex.submit(block, release, started, 1)
        wait_for_file(started)
        queued = ex.submit(abs, -5)  # the worker's one thread is busy
        assert queued.cancel()
        assert queued.cancelled()
        assert cf.wait([queued], timeout=1).done == {queued}
        open(release, "w").close()
        assert running.result(timeout=20) == 1


def test_shutdown_waits_cancels_and_refuses_new_work(client, tmp_path):
    release = str(tmp_path / "release")
    executor = client.get_executor()
    waiting = executor.submit(block, release, None, "done")
    open(release, "w").close()
    executor.shutdown(wait=True)
    assert waiting.done()
    assert waiting.result() == "done"
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(abs, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(abs, [1])

    # cancel_futures cancels the calls that wait, not those that run (as a pool).
    other = client.get_executor()
    go = str(tmp_path / "go")
    started = [str(tmp_path / f"started-{i}") for i in range(2)]
    running = [other.submit(block, go, path, i) for i, path in enumerate(started)]
    for path in started:  # both workers' one thread each is busy
        wait_for_file(path)
    queued = other.submit(abs, -5)
    other.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    assert all(f.running() and not f.cancel() for f in running)
    open(go, "w").close()
    assert [f.result(timeout=20) for f in running] == [0, 1]
    other.shutdown()  # a second call is harmless


def test_unknown_keyword_is_refused(client):
    with pytest.raises(TypeError, match="unsupported"):
        client.get_executor(bogus=1)
