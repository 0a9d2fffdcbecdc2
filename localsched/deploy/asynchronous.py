"""``LocalCluster(asynchronous=True)``: the cluster's awaitable surface.

dask's asynchronous clusters start when awaited (``await cluster`` or
``async with``), and their ``close``, ``scale`` and ``wait_for_workers`` return
awaitables when called from the event loop. Here the cluster is the same
scheduler thread and worker processes as a synchronous one; what blocks (forking
the janitor, waiting for the workers to say hello, joining them at close) runs
in a short-lived thread of its own, and the coroutine awaits its
``concurrent.futures.Future`` (:func:`localsched.aio.await_cell`: woken by
``call_soon_threadsafe``, and never cancelling it): the caller's event loop
goes on meanwhile, and no event loop of ours runs anywhere.

A cluster is asynchronous only for calls made while an event loop runs in the
calling thread, as dask's ``SyncMethodMixin.asynchronous``: the exit handler
and ``__del__`` close it synchronously.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from localsched.aio import await_cell

if TYPE_CHECKING:
    from localsched.deploy.local import LocalCluster

__all__ = [
    "AsyncClusterMixin",
    "Awaitable",
    "close_off_loop",
    "close_soon",
    "run_off_loop",
    "wait_for_workers_async",
]

T = TypeVar("T")

#: Seconds between two looks at the worker count while awaiting it.
_POLL = 0.005


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _in_thread(function: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """Run ``function`` in a new daemon thread; its outcome in a future.

    A thread of its own rather than the loop's default executor: it ends with
    the call (the leak checks see no idle pool thread), and an awaiting
    coroutine on any event loop can wait for it.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # a cancelled awaiter cannot cancel it

    def run() -> None:
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting coroutine
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def run_off_loop(function: Callable[[], T], name: str) -> T:
    """Await ``function()`` run in its own thread, off the caller's event loop."""
    return await await_cell(_in_thread(function, name))


class Awaitable(Generic[T]):
    """An awaitable on work already under way (``scale`` on an asynchronous
    cluster): the work happens whether or not it is awaited, as dask's
    ``NoOpAwaitable``, with no "never awaited" warning when it is not."""

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, T]:
        return await_cell(self._future).__await__()


def close_soon(
    cluster: LocalCluster, timeout: float
) -> concurrent.futures.Future[None]:
    """Start closing ``cluster`` in a thread of its own, now; its outcome in a
    future shared by every caller.

    A start under way finishes first. The close begins whether or not the
    caller awaits it: code written for a synchronous cluster that calls
    ``cluster.close()`` on the event loop and ignores the result still closes
    it (dask's would return a coroutine that, not awaited, does nothing).
    """
    closing = cluster._close_future
    if closing is not None:
        return closing

    def close() -> None:
        starting = cluster._start_future
        if starting is not None:
            with contextlib.suppress(BaseException):  # its awaiter has it
                starting.result()
        cluster._close(timeout)

    closing = cluster._close_future = _in_thread(close, f"{cluster.name}-close")
    return closing


async def close_off_loop(cluster: LocalCluster, timeout: float) -> None:
    """``await cluster.close()``: :func:`close_soon`, awaited."""
    await await_cell(close_soon(cluster, timeout))


async def wait_for_workers_async(
    cluster: LocalCluster, n_workers: int, timeout: float | None
) -> None:
    """``await cluster.wait_for_workers(n)``: poll the count on the scheduler
    thread (one round trip per look) between short sleeps of the event loop."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        cluster._restarts.check()  # workers that cannot start: say why, now
        count = await _worker_count(cluster)
        if count >= n_workers:
            return
        if deadline is not None and loop.time() > deadline:
            raise TimeoutError(
                f"Only {count} of {n_workers} workers started within {timeout} s"
            )
        await asyncio.sleep(_POLL)


async def _worker_count(cluster: LocalCluster) -> int:
    scheduler = cluster.scheduler
    return await await_cell(cluster.runtime.call(lambda: len(scheduler.workers)))


async def _reach_target(cluster: LocalCluster, timeout: float) -> None:
    """Wait until the workers the scheduler knows are as many as the target
    (``scale``, ``adapt``): dask's ``await cluster`` after ``scale(n)``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while cluster.status == "running":
        cluster._restarts.check()
        count = await _worker_count(cluster)
        if count == cluster._target:
            return
        if loop.time() > deadline:
            raise TimeoutError(
                f"{count} workers instead of {cluster._target} after {timeout} s"
            )
        await asyncio.sleep(_POLL)


class AsyncClusterMixin:
    """What ``LocalCluster`` adds for ``asynchronous=True`` (see the module doc)."""

    _asynchronous: bool
    _pending_start: Callable[[], None] | None
    _start_future: concurrent.futures.Future[None] | None = None
    _close_future: concurrent.futures.Future[None] | None = None

    @property
    def asynchronous(self) -> bool:
        """True if built with ``asynchronous=True`` and called from a running
        event loop: then ``close``, ``scale`` and ``wait_for_workers`` return
        awaitables (dask's ``SyncMethodMixin.asynchronous``)."""
        return self._asynchronous and running_loop() is not None

    def __await__(self) -> Generator[Any, None, LocalCluster]:
        return self._started().__await__()

    async def _started(self) -> LocalCluster:
        from localsched.deploy.local import START_TIMEOUT

        cluster: LocalCluster = self  # type: ignore[assignment]
        if cluster.loop is None:
            cluster._remember_loop()
        if self._pending_start is not None:
            start, self._pending_start = self._pending_start, None
            cluster.status = "starting"
            self._start_future = _in_thread(start, f"{cluster.name}-start")
        if self._start_future is not None:
            await await_cell(self._start_future)
        if cluster.status == "running":
            await _reach_target(cluster, START_TIMEOUT)
        return cluster

    async def __aenter__(self) -> LocalCluster:
        cluster: LocalCluster = self  # type: ignore[assignment]
        try:
            return await self
        except BaseException:
            # Cancelled or failed while starting: nothing stays running.
            await close_off_loop(cluster, 10.0)
            raise

    async def __aexit__(self, *exc: object) -> None:
        cluster: LocalCluster = self  # type: ignore[assignment]
        await close_off_loop(cluster, 10.0)
