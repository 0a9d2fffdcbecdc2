"""The asynchronous client (``Client(asynchronous=True)``), with anyio's
pytest plugin on asyncio: awaiting, timeouts, cancellation, errors with their
types, the batched wake-ups, and mixing with synchronous code."""

from __future__ import annotations

import asyncio
import operator
import threading
from concurrent.futures import Future as CellFuture
from typing import Any

import pytest

from localsched import (
    Client,
    Event,
    LocalCluster,
    Lock,
    MultiLock,
    Queue,
    Semaphore,
    Variable,
    as_completed,
    get_client,
    wait,
)
from localsched.aio import await_cell, waker_for
from localsched.client.future import FutureCancelledError
from localsched.errors import ClosedClientError
from tests.runtime.helpers import DEADLINE

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client wakes asyncio loops (not trio's)


@pytest.fixture(scope="module")
def cluster() -> Any:
    with LocalCluster(n_workers=2, threads_per_worker=1) as shared:
        yield shared


def inc(x: int) -> int:
    return x + 1


def block_on(name: str, value: Any = None) -> Any:
    """Wait (in the task) until the coordination ``Event(name)`` is set."""
    assert Event(name).wait(timeout=DEADLINE)
    return value


class CountingLoop:
    """Counts ``call_soon_threadsafe`` on the running loop (the wake-ups)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.calls = 0
        self._original = self.loop.call_soon_threadsafe

    def __enter__(self) -> CountingLoop:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self._original(*args, **kwargs)

        self.loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.loop.call_soon_threadsafe


# -- starting and closing ---------------------------------------------------------


async def test_await_client_starts_its_cluster_and_close_stops_it():
    client = await Client(asynchronous=True, n_workers=1, threads_per_worker=1)
    try:
        assert client.status == "running"
        assert client.asynchronous
        assert client.loop.asyncio_loop is asyncio.get_running_loop()
        assert await client.submit(inc, 1) == 2
    finally:
        await client.close()
    assert client.status == "closed"
    assert client.cluster.status == "closed"


async def test_async_with_attaches_to_a_cluster_and_leaves_it_running(cluster):
    async with Client(cluster, asynchronous=True) as client:
        assert Client.current() is client
        assert await client.submit(inc, 41) == 42
    assert client.status == "closed"
    assert cluster.status == "running"


def test_asynchronous_outside_an_event_loop_raises_dasks_error():
    with pytest.raises(RuntimeError, match=r"LoopRunner\(asynchronous=True\)"):
        Client(asynchronous=True)


# -- futures, gather, scatter ------------------------------------------------------


async def test_futures_are_awaitable_and_result_is_a_coroutine(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(inc, 1)
        result = future.result()
        assert asyncio.iscoroutine(result)
        assert await result == 2
        assert await future == 2
        assert await future.exception() is None
        assert await future.traceback() is None


async def test_gather_scatter_compute_and_get_are_awaitable(cluster):
    async with Client(cluster, asynchronous=True) as client:
        [x] = await client.scatter([10])
        futures = client.map(inc, range(5))
        assert await client.gather({"x": x, "rest": futures}) == {
            "x": 10,
            "rest": [1, 2, 3, 4, 5],
        }
        assert await client.submit(operator.add, x, 1) == 11
        graph = {"a": 1, "b": (inc, "a")}
        assert await client.get(graph, "b") == 2


async def test_errors_keep_their_original_types(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(operator.truediv, 1, 0)
        with pytest.raises(ZeroDivisionError):
            await future
        with pytest.raises(ZeroDivisionError):
            await client.gather([future])
        assert isinstance(await future.exception(), ZeroDivisionError)
        assert await client.gather([future], errors="skip") == []
        with pytest.raises(KeyError, match="not found"):
            await client.get_dataset("nothing-here")
        with pytest.raises(ValueError, match="on_error"):
            await client.run(inc, 1, on_error="bad")


async def test_a_result_timeout_raises_timeout_error_and_the_task_runs_on(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(block_on, "timeout-release", 7)
        with pytest.raises(TimeoutError):
            await future.result(timeout=0.05)
        await Event("timeout-release").set()
        assert await future == 7


async def test_cancelling_an_awaiting_coroutine_leaves_the_task_alone(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(block_on, "cancel-release", 3)
        waiter = asyncio.ensure_future(client.gather([future]))
        await asyncio.wait([waiter], timeout=0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert future.status == "pending"
        await Event("cancel-release").set()
        assert await future == 3


async def test_closing_the_client_cancels_pending_awaits(cluster):
    client = await Client(cluster, asynchronous=True)
    future = client.submit(block_on, "close-release")
    waiter = asyncio.ensure_future(future.result())
    await asyncio.wait([waiter], timeout=0.05)
    await client.close()
    with pytest.raises(FutureCancelledError, match="client-closed"):
        await waiter
    with Client(cluster) as other:
        Event("close-release", client=other).set()


async def test_cancel_and_retry_are_awaitable(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(block_on, "retry-release", pure=False)
        await future.cancel()
        assert future.cancelled()
        with pytest.raises(FutureCancelledError):
            await future
        failing = client.submit(operator.truediv, 1, 0)
        with pytest.raises(ZeroDivisionError):
            await failing
        await failing.retry()
        with pytest.raises(ZeroDivisionError):
            await failing
        await Event("retry-release").set()


# -- many futures: batched wake-ups ------------------------------------------------


async def test_gathering_10000_futures_costs_a_few_wakeups(cluster):
    async with Client(cluster, asynchronous=True) as client:
        futures = client.map(inc, range(10_000), pure=False)
        with CountingLoop() as counting:
            results = await client.gather(futures)
        assert results == list(range(1, 10_001))
        assert counting.calls <= 3


def after(gate: Any, x: int) -> int:
    return x


async def test_10000_awaits_resolved_together_wake_the_loop_a_few_times(cluster):
    async with Client(cluster, asynchronous=True) as client:
        gate = client.submit(block_on, "gate-release", pure=False)
        futures = client.map(after, [gate] * 10_000, range(10_000), pure=False)
        awaiting = asyncio.ensure_future(
            asyncio.gather(*futures, return_exceptions=True)
        )
        await asyncio.wait([awaiting], timeout=0.1)  # all 10,000 are waiting
        waker = waker_for()
        before = waker.wakeups
        with CountingLoop() as counting:
            await client.cancel(futures)
            results = await awaiting
        assert all(isinstance(r, FutureCancelledError) for r in results)
        assert len(results) == 10_000
        # The scheduler resolves them in one step; the loop drains what is
        # queued whenever it gets the GIL (about 70 wake-ups measured, against
        # 10,000 unbatched): each wake-up resumes many coroutines.
        assert waker.wakeups - before < 500
        assert counting.calls <= waker.wakeups - before + 2  # the cancel's answer
        await Event("gate-release").set()
        assert await gate is None


# -- wait and as_completed -----------------------------------------------------------


async def test_wait_is_awaitable_in_the_loop_with_a_timeout(cluster):
    async with Client(cluster, asynchronous=True) as client:
        futures = client.map(inc, range(10))
        done, not_done = await wait(futures)
        assert len(done) == 10
        assert not not_done
        blocked = client.submit(block_on, "wait-release")
        with pytest.raises(TimeoutError):
            await wait([blocked], timeout=0.05)
        done, not_done = await wait(
            [blocked, futures[0]], return_when="FIRST_COMPLETED"
        )
        assert done == {futures[0]}
        await Event("wait-release").set()
        await wait(blocked)


async def test_async_for_over_as_completed_yields_every_future_once(cluster):
    async with Client(cluster, asynchronous=True) as client:
        futures = client.map(inc, range(20))
        seen = [future async for future in as_completed(futures)]
        assert sorted(f.key for f in seen) == sorted(f.key for f in futures)
        failing = client.submit(operator.truediv, 1, 0)
        pairs = [
            pair
            async for pair in as_completed(
                [futures[0], failing], with_results=True, raise_errors=False
            )
        ]
        values = {future.key: value for future, value in pairs}
        assert values[futures[0].key] == 1
        assert values[failing.key][0] is ZeroDivisionError
        with pytest.raises(ZeroDivisionError):
            async for _ in as_completed([failing], with_results=True):
                pass


async def test_as_completed_times_out_in_async_for(cluster):
    async with Client(cluster, asynchronous=True) as client:
        blocked = client.submit(block_on, "as-completed-release")
        with pytest.raises(TimeoutError):
            async for _ in as_completed([blocked], timeout=0.05):
                pass
        await Event("as-completed-release").set()
        assert await blocked is None


def test_as_completed_async_for_works_with_a_synchronous_client(cluster):
    with Client(cluster) as client:
        futures = client.map(inc, range(5))

        async def collect() -> list[Any]:
            return [f async for f in as_completed(futures)]

        assert {f.key for f in asyncio.run(collect())} == {f.key for f in futures}


# -- cluster control, datasets -----------------------------------------------------


async def test_run_scheduler_info_and_control_are_awaitable(cluster):
    async with Client(cluster, asynchronous=True) as client:
        info = await client.scheduler_info()
        assert len(info["workers"]) == 2
        assert sorted(await client.run(operator.add, 1, 2)) == sorted(info["workers"])
        assert set((await client.run(operator.add, 1, 2)).values()) == {3}
        assert await client.run_on_scheduler(operator.mul, 6, 7) == 42
        assert sum((await client.nthreads()).values()) == 2
        await client.wait_for_workers(2)
        future = client.submit(inc, 1)
        await future
        assert future.key in await client.who_has([future])
        await client.set_metadata(["a", "b"], 1)
        assert await client.get_metadata(["a", "b"]) == 1
        assert await client.get_versions()  # a method without a twin: inline


async def test_retire_workers_is_awaitable_and_leaves_the_loop_running():
    async with Client(asynchronous=True, n_workers=2, threads_per_worker=1) as client:
        [first, _] = sorted((await client.scheduler_info())["workers"])
        retiring = asyncio.ensure_future(client.retire_workers([first]))
        assert await client.submit(inc, 1) == 2  # the loop runs meanwhile
        assert first in await retiring
        assert first not in await client.nthreads()


async def test_publish_and_get_dataset_are_awaitable(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(inc, 1)
        await client.publish_dataset(data=future)
        assert await client.list_datasets() == ["data"]
        assert await (await client.get_dataset("data")) == 2
        assert [name async for name in client.datasets] == ["data"]
        assert await (await client.datasets["data"]) == 2
        await client.unpublish_dataset("data")
        assert await client.list_datasets() == []


def test_async_for_over_a_sync_clients_datasets_raises_dasks_type_error(cluster):
    with Client(cluster) as client, pytest.raises(TypeError, match="synchronous"):
        client.datasets.__aiter__()


async def test_a_coroutine_topic_handler_runs_in_the_clients_loop(cluster):
    async with Client(cluster, asynchronous=True) as client:
        loop = asyncio.get_running_loop()
        received = loop.create_future()

        async def handler(event: tuple[float, Any]) -> None:
            assert asyncio.get_running_loop() is loop
            if not received.done():
                received.set_result(event[1])

        client.subscribe_topic("async-topic", handler)
        await client.log_event("async-topic", {"x": 1})
        assert await asyncio.wait_for(received, DEADLINE) == {"x": 1}


# -- coordination primitives ---------------------------------------------------------


async def test_lock_and_semaphore_are_awaitable(cluster):
    async with Client(cluster, asynchronous=True):
        lock = Lock("async-lock")
        assert await lock.acquire()
        assert await lock.locked()
        assert not await Lock("async-lock").acquire(timeout=0.05)
        await lock.release()
        async with Lock("async-lock"):
            assert await lock.locked()
        assert not await lock.locked()
        semaphore = Semaphore(max_leases=2, name="async-semaphore")
        assert await semaphore.acquire()
        assert await semaphore.acquire()
        assert not await semaphore.acquire(timeout=0.05)
        assert await semaphore.get_value() == 2
        await semaphore.release()
        await semaphore.release()


async def test_multilock_is_awaitable(cluster):
    async with Client(cluster, asynchronous=True):
        both = MultiLock(["ml-a", "ml-b"])
        assert await both.acquire()
        assert not await MultiLock(["ml-b"]).acquire(timeout=0.05)
        await both.release()
        async with MultiLock(["ml-a", "ml-b"]) as again:
            assert again.locked()
        assert await MultiLock(["ml-b"]).acquire(blocking=False)


async def test_a_cancelled_lock_wait_is_withdrawn(cluster):
    async with Client(cluster, asynchronous=True):
        holder = Lock("withdrawn-lock")
        assert await holder.acquire()
        waiter = asyncio.ensure_future(Lock("withdrawn-lock").acquire())
        await asyncio.wait([waiter], timeout=0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await holder.release()
        # The cancelled waiter got no lease, or gave it back.
        assert await holder.acquire(timeout=DEADLINE)
        await holder.release()


async def test_closing_the_client_ends_waits_on_primitives(cluster):
    with Client(cluster, set_as_default=False) as other:
        assert Lock("closing-lock", client=other).acquire()
        client = await Client(cluster, asynchronous=True, set_as_default=False)
        lock = asyncio.ensure_future(Lock("closing-lock", client=client).acquire())
        get = asyncio.ensure_future(Queue("closing-queue", client=client).get())
        await asyncio.wait([lock, get], timeout=0.05)
        await client.close()
        for waiting in (lock, get):
            with pytest.raises(ClosedClientError):
                await asyncio.wait_for(waiting, DEADLINE)


async def test_queue_event_and_variable_are_awaitable(cluster):
    async with Client(cluster, asynchronous=True) as client:
        queue = Queue("async-queue")
        await queue.put(1)
        await queue.put(client.submit(inc, 1))
        assert await queue.qsize() == 2
        assert await queue.get() == 1
        assert await (await queue.get()) == 2
        with pytest.raises(TimeoutError):
            await queue.get(timeout=0.05)
        event = Event("async-event")
        assert not await event.wait(timeout=0.05)
        waiting = asyncio.ensure_future(event.wait())
        await event.set()
        assert await waiting
        assert await event.is_set()
        await event.clear()
        assert not await event.is_set()
        variable = Variable("async-variable")
        with pytest.raises(TimeoutError):
            await variable.get(timeout=0.05)
        await variable.set(5)
        assert await variable.get() == 5
        await variable.delete()


# -- mixing synchronous and asynchronous ---------------------------------------------


async def test_an_async_client_blocks_when_called_from_another_thread(cluster):
    async with Client(cluster, asynchronous=True) as client:
        future = client.submit(inc, 1)
        answer: CellFuture[Any] = CellFuture()

        def call() -> None:
            try:
                answer.set_result((client.asynchronous, client.gather([future])))
            except BaseException as error:
                answer.set_exception(error)

        thread = threading.Thread(target=call)
        thread.start()
        assert await await_cell(answer) == (False, [2])
        thread.join()


async def test_a_sync_client_in_a_running_loop_blocks_as_in_a_notebook(cluster):
    with Client(cluster) as client:
        assert not client.asynchronous
        future = client.submit(inc, 1)
        assert future.result() == 2
        assert client.gather([future]) == [2]
        assert await future == 2  # awaiting works in any loop


def test_a_sync_clients_loop_runs_coroutines_where_it_is_asynchronous(cluster):
    with Client(cluster) as client:
        loop = client.loop

        async def inside() -> int:
            assert client.asynchronous
            x = await client.scatter(123)
            y = client.submit(inc, x)
            return await client.gather(y)

        done = asyncio.run_coroutine_threadsafe(inside(), loop.asyncio_loop)
        assert done.result(DEADLINE) == 124
        assert not client.asynchronous  # this thread is not the loop's

        ran: CellFuture[int] = CellFuture()

        async def callback() -> None:
            ran.set_result(await client.submit(inc, 1))

        loop.add_callback(callback)
        assert ran.result(DEADLINE) == 2
    assert not [t for t in threading.enumerate() if t.name == "localsched-client-loop"]


async def test_client_sync_returns_an_awaitable_in_the_loop(cluster):
    async with Client(cluster, asynchronous=True) as client:

        async def seven() -> int:
            return 7

        assert await client.sync(seven) == 7
        assert client.sync(operator.add, 3, 4, asynchronous=False) == 7
        with pytest.raises(RuntimeError, match="await it instead"):
            client.sync(seven, asynchronous=False)
        with pytest.raises(TimeoutError):
            await client.sync(asyncio.Event().wait, callback_timeout=0.05)


def test_explicit_asynchronous_true_on_a_sync_client_returns_awaitables(cluster):
    with Client(cluster) as client:
        future = client.submit(inc, 1)

        async def main() -> Any:
            return await client.gather([future], asynchronous=True)

        assert asyncio.run(main()) == [2]


def awaits_in_a_task(x: int) -> Any:
    """A task running asyncio code on the worker's client."""
    client = get_client()

    async def main() -> Any:
        future = client.submit(inc, x)
        first = await future
        return first, await client.gather([future], asynchronous=True)

    return asyncio.run(main())


def test_a_tasks_client_can_be_awaited_from_asyncio_code(cluster):
    with Client(cluster) as client:
        assert client.submit(awaits_in_a_task, 1).result(DEADLINE) == (2, [2])
