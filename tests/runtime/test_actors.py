"""Actors on real worker processes: handles, calls, lifetime and worker loss."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading

import cloudpickle
import pytest

from localsched import (
    Actor,
    ActorFuture,
    BaseActorFuture,
    Client,
    as_completed,
    get_client,
    get_worker,
    wait,
)
from tests.runtime.helpers import DEADLINE, poll

# Workers never import the test package: classes and functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)


class Counter:
    n = 0

    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.label = "instance only"

    def increment(self) -> int:
        self.n += 1
        return self.n

    def add(self, x: int) -> int:
        self.n += x
        return self.n

    def where(self) -> tuple[str, int]:
        return get_worker().address, os.getpid()

    @property
    def doubled(self) -> int:
        return 2 * self.n

    @property
    def broken(self) -> int:
        raise KeyError("no such thing")

    def divide(self, x: int) -> float:
        return self.n / x

    def block(self) -> None:
        threading.Event().wait(DEADLINE)


class Recorder:
    """Records entries and exits: overlapping calls would interleave them."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def record(self, i: int) -> None:
        self.log.append(f"enter {i}")
        threading.Event().wait(0.002)  # room for another thread to cut in
        self.log.append(f"exit {i}")


class Waiter:
    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self.event is None:
            self.event = asyncio.Event()  # on the actor event loop
        return self.event

    async def wait(self) -> bool:
        return await self._event().wait()

    async def set(self) -> None:
        self._event().set()


class UsesCounter:
    def do_inc(self, counter: Actor) -> int:
        return counter.increment().result()


def actors_on_workers(client: Client) -> dict[str, int]:
    return client.run(lambda dask_worker: len(dask_worker.state.actors))


def test_result_is_a_handle_to_an_object_living_in_its_worker(client):
    address = sorted(client.nthreads())[0]
    future = client.submit(Counter, 5, actor=True, workers=[address])

    counter = future.result()

    assert type(counter) is Actor
    assert counter.key == future.key
    assert repr(counter) == f"<Actor: Counter, key={future.key}>"
    assert counter._address == address
    assert counter.where().result()[0] == address
    assert counter.where().result()[1] != os.getpid()
    assert actors_on_workers(client)[address] == 1


def test_method_calls_return_actor_futures_and_change_the_object(client):
    counter = client.submit(Counter, actor=True).result()

    future = counter.increment()

    assert isinstance(future, ActorFuture)
    assert isinstance(future, BaseActorFuture)
    assert repr(future) == "<ActorFuture>"
    assert future.result(timeout=DEADLINE) == 1
    assert future.result() == 1  # kept
    assert future.done()
    assert counter.add(10).result() == 11


def test_attribute_reads_return_values_from_the_worker(client):
    counter = client.submit(Counter, 3, actor=True).result()

    assert counter.n == 3  # a class attribute's name, the object's value
    assert counter.doubled == 6  # a property
    assert counter.label == "instance only"  # set by __init__ only
    assert not hasattr(counter, "missing")
    assert "increment" in dir(counter)


def test_exceptions_keep_their_type(client):
    counter = client.submit(Counter, actor=True).result()

    with pytest.raises(ZeroDivisionError):
        counter.divide(0).result()
    with pytest.raises(KeyError, match="no such thing"):
        counter.broken  # noqa: B018 - the read raises on the worker
    assert isinstance(counter.divide(0).exception(), ZeroDivisionError)


def test_a_failing_constructor_errs_the_future(client):
    future = client.submit(Counter, "not a number", actor=True)

    with pytest.raises(TypeError):
        future.result().increment().result()


def test_actor_tasks_are_impure(client):
    first = client.submit(Counter, actor=True)
    second = client.submit(Counter, actor=True)

    assert first.key != second.key


def test_calls_of_one_worker_run_one_at_a_time_in_call_order(client):
    recorder = client.submit(Recorder, actor=True).result()

    futures = [recorder.record(i) for i in range(10)]
    wait(futures, timeout=DEADLINE)

    expected = [line for i in range(10) for line in (f"enter {i}", f"exit {i}")]
    assert recorder.log == expected


def test_coroutine_methods_run_on_the_actor_event_loop(client):
    waiter = client.submit(Waiter, actor=True).result()

    waiting = waiter.wait()
    with pytest.raises(TimeoutError):
        waiting.result(timeout="10ms")
    waiter.set().result(timeout=DEADLINE)

    assert waiting.result(timeout=DEADLINE) is True


def test_wait_and_as_completed_take_actor_futures(client):
    counter = client.submit(Counter, actor=True).result()

    futures = [counter.increment() for _ in range(10)]
    done, not_done = wait(futures, timeout=DEADLINE)
    values = sorted(f.result() for f in as_completed(futures))

    assert (len(done), len(not_done)) == (10, 0)
    assert values == list(range(1, 11))


def test_a_task_calls_an_actor_through_its_handle(client):
    workers = sorted(client.nthreads())
    counter = client.submit(Counter, actor=True, workers=[workers[0]]).result()

    def use(counter: Actor, n: int) -> int:
        assert type(counter) is Actor
        for _ in range(n):
            counter.increment().result()
        return counter.n

    futures = [client.submit(use, counter, 3, workers=[w], pure=False) for w in workers]

    assert max(client.gather(futures)) == 6
    assert counter.n == 6


def test_an_actor_method_calls_an_actor_of_its_own_worker_directly(client):
    address = sorted(client.nthreads())[0]
    counter = client.submit(Counter, actor=True, workers=[address]).result()
    user = client.submit(UsesCounter, actor=True, workers=[address]).result()

    # Through the scheduler this would wait for the actor thread it runs on.
    assert user.do_inc(counter).result(timeout=DEADLINE) == 1


def test_an_actor_lives_as_long_as_a_handle_or_future_of_it(client):
    def gone() -> bool:
        return not any(actors_on_workers(client).values())

    def earlier_gone() -> bool:
        # Earlier tests' handles may sit in reference cycles (a raised error's
        # traceback holds its frame's locals) until the collector runs.
        gc.collect()
        return gone()

    assert poll(earlier_gone)
    future = client.submit(Counter, actor=True)
    counter = future.result()
    del future

    assert counter.increment().result() == 1  # the handle keeps it
    del counter
    assert poll(gone)


def test_compute_with_actors_passes_handles_and_releases_them(client):
    dask = pytest.importorskip("dask")

    @dask.delayed
    def bump(n: int, counter: Actor) -> None:
        assert type(counter) is Actor
        for _ in range(n):
            counter.increment().result()

    @dask.delayed
    def total(counter: Actor, blanks: list[None]) -> int:
        return counter.n

    counter = dask.delayed(Counter)()
    final = total(counter, [bump(i, counter) for i in range(5)])

    assert client.compute(final, actors=counter).result() == 10
    # gc: earlier tests' handles in reference cycles (see the test above).
    assert poll(
        lambda: gc.collect() >= 0 and not any(actors_on_workers(client).values())
    )
    with client.as_current():
        assert final.compute(actors=counter) == 10


def test_an_actor_submitted_from_a_task_is_usable_there(client):
    def make_and_use() -> int:
        counter = get_client().submit(Counter, actor=True).result()
        counter.increment().result()
        return counter.add(5).result()

    assert client.submit(make_and_use).result() == 6


def test_losing_the_actors_worker_fails_its_calls_clearly():
    with Client(n_workers=2, threads_per_worker=1) as client:
        counter = client.submit(Counter, actor=True).result()
        pid = counter.where().result()[1]
        in_flight = counter.block()
        assert counter.n == 0  # reads do not wait for the running method

        os.kill(pid, 9)

        with pytest.raises(RuntimeError, match="Worker holding Actor was lost"):
            in_flight.result(timeout=DEADLINE)
        assert poll(lambda: counter._future.status == "error")
        with pytest.raises(RuntimeError, match="Worker holding Actor was lost"):
            counter.increment()


def test_actors_on_thread_workers():
    with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        counter = client.submit(Counter, actor=True).result()
        user = client.submit(UsesCounter, actor=True).result()

        assert counter.increment().result(timeout=DEADLINE) == 1
        assert user.do_inc(counter).result(timeout=DEADLINE) == 2
        assert counter.where().result()[1] == os.getpid()
