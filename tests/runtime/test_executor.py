"""``client.get_executor()`` against the standard library's executor behaviour:
``wait``, ``as_completed``, ``map`` (order, timeout, early close, chunksize),
``cancel`` (not once running), ``shutdown`` (wait, cancel_futures, no new work
after it), ``submit``'s keywords, ``initializer``, ``max_tasks_per_child``, the
errors of pickling, unpickling and dead workers, and ``processes=False``
workers that take calls without pickling."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import gc
import multiprocessing
import os
import pickle
import threading
import weakref
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

import pytest

from localsched import Client
from localsched.errors import KilledWorker
from localsched.transport import inproc
from tests.runtime.helpers import (
    DEADLINE,
    CrashAtUnpickle,
    block,
    crash_task,
    lines,
    poll,
    raise_value_error,
    record,
    return_crash_at_unpickle,
    wait_for_file,
)


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
        # As in a pool, a running call cannot be cancelled: it runs to its end.
        assert not running.cancel()
        assert running.running()
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


def test_submit_keywords_all_belong_to_the_function(client):
    with client.get_executor() as executor:
        kwargs = {"self": 2, "fn": 3, "key": "k", "pure": 5, "workers": 6}
        assert executor.submit(dict, **kwargs).result(timeout=DEADLINE) == kwargs
        with pytest.raises(TypeError):
            executor.submit(fn=dict, arg=1)  # fn is positional-only, as CPython's


def test_map_chunksize_is_validated(client):
    with client.get_executor() as executor:
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(abs, [1], chunksize=0)
        assert list(executor.map(pow, range(5), range(5), chunksize=3)) == [
            pow(i, i) for i in range(5)
        ]


def test_map_keeps_no_reference_to_yielded_results(client):
    with client.get_executor() as executor:
        for result in executor.map(collections.OrderedDict, [[(1, 2)], [(3, 4)]]):
            ref = weakref.ref(result)
            del result
            gc.collect()
            assert ref() is None


def test_initializer_runs_once_per_worker_before_its_calls(client, tmp_path):
    path = str(tmp_path / "inits")
    with client.get_executor(initializer=record, initargs=(path, "init")) as ex:
        calls = [ex.submit(os.getpid) for _ in range(6)]
        pids = {f.result(timeout=DEADLINE) for f in calls}
    # Each worker process that ran calls ran the initializer, once.
    assert lines(path) == ["init"] * len(pids)


def test_failing_initializer_breaks_the_executor(client):
    executor = client.get_executor(initializer=raise_value_error, initargs=(7,))
    future = executor.submit(abs, -1)
    with pytest.raises(BrokenProcessPool, match=r"initializer.*ValueError\('bad 7'\)"):
        future.result(timeout=DEADLINE)
    with pytest.raises(BrokenProcessPool):
        executor.submit(abs, -1)
    executor.shutdown()


def test_max_tasks_per_child_is_validated_and_accepted(client):
    with pytest.raises(ValueError, match=">= 1"):
        client.get_executor(max_tasks_per_child=0)
    with pytest.raises(TypeError, match="integer"):
        client.get_executor(max_tasks_per_child="3")
    with client.get_executor(max_tasks_per_child=2) as executor:
        assert list(executor.map(abs, [-1, -2, -3])) == [1, 2, 3]


class _FailsToPickle:
    def __reduce__(self):
        raise pickle.PicklingError("refused")


def test_pickling_and_unpickling_errors(client):
    with client.get_executor() as executor:
        # Arguments that cannot be pickled: the pickler's own error, in the future.
        future = executor.submit(id, _FailsToPickle())
        assert type(future.exception(timeout=DEADLINE)) is pickle.PicklingError
        # A call its worker cannot unpickle, a result the caller cannot: the
        # pool's error, as a ProcessPoolExecutor says it, with the cause.
        future = executor.submit(id, CrashAtUnpickle("raise"))
        error = future.exception(timeout=DEADLINE)
        assert isinstance(error, BrokenProcessPool)
        assert "unpickling" in str(error.__cause__)
        future = executor.submit(return_crash_at_unpickle, "raise")
        error = future.exception(timeout=DEADLINE)
        assert isinstance(error, BrokenProcessPool)
        assert "unpickling" in str(error.__cause__)


def test_exception_carries_the_remote_traceback(client):
    with client.get_executor() as executor:
        error = executor.submit(raise_value_error, 3).exception(timeout=DEADLINE)
        assert type(error) is ValueError
        assert type(error.__cause__) is _RemoteTraceback
        assert "raise_value_error" in str(error.__cause__)


def test_manager_proxy_arguments_authenticate(client):
    # Workers share our multiprocessing authkey, as multiprocessing's children.
    with multiprocessing.Manager() as manager:
        event = manager.Event()
        with client.get_executor() as executor:
            executor.submit(event.set).result(timeout=DEADLINE)
        assert event.is_set()


def test_a_crashing_call_breaks_that_call_only():
    # dask's retries: the call went to allowed_failures + 1 workers, all died.
    with (
        Client(n_workers=1, threads_per_worker=1, allowed_failures=0) as c,
        c.get_executor() as executor,
    ):
        error = executor.submit(crash_task, "exit").exception(timeout=DEADLINE)
        assert isinstance(error, BrokenProcessPool)
        assert isinstance(error.__cause__, KilledWorker)
        # The cluster replaced the worker: the executor goes on.
        assert executor.submit(abs, -4).result(timeout=DEADLINE) == 4


def test_in_process_workers_take_calls_without_pickling():
    lock = threading.Lock()
    finished = []

    def record_finished(n):
        with lock:  # a closure over a lock: cannot be pickled
            finished.append(n)  # the caller's own list
        return n

    kept = inproc.count()
    with Client(processes=False, n_workers=2, threads_per_worker=2) as c:
        assert c.submit(record_finished, -1).result(timeout=DEADLINE) == -1
        executor = c.get_executor()
        executor.map(record_finished, range(10))
        executor.shutdown(wait=True)
        assert sorted(finished) == list(range(-1, 10))
        # The calls are released with their tasks.
        del executor
        assert poll(lambda: inproc.count() <= kept)
    assert inproc.count() <= kept


def test_in_process_workers_write_large_results_apart():
    # Two thread workers share a pid: their segments are named by worker.
    with Client(processes=False, n_workers=2, threads_per_worker=2) as c:
        futures = c.map(bytearray, [200_000 + i for i in range(8)], pure=False)
        assert [len(r) for r in c.gather(futures)] == [200_000 + i for i in range(8)]


def test_in_process_calls_of_known_keys_are_released():
    kept = inproc.count()
    with Client(processes=False, n_workers=1, threads_per_worker=1) as c:
        first = c.map(abs, [-1, -2])
        again = c.map(abs, [-1, -2, -3])  # two keys this client holds already
        assert c.gather(again) == [1, 2, 3]
        assert c.gather(first) == [1, 2]
        del first, again
        assert poll(lambda: inproc.count() <= kept)
