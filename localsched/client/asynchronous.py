"""dask's asynchronous client: ``await Client(asynchronous=True)`` and friends.

No event loop and no thread of our own: an asynchronous client is bound to the
event loop it was made in (``LoopBinding``), and in that loop its ``@dual``
methods (:mod:`localsched.client.dual`) return coroutines, its twins here.
A twin sends the same typed requests as the blocking method and awaits their
cells, or the futures' states, through the loop's batched
:class:`~localsched.aio.Waker`: the scheduler thread resolves, the loop
resumes, and a ``gather`` of 10,000 futures is one wake-up::

    coroutine ── await gather ──▶ await_states(states) ◀─ countdown on the
                                       ▲                    scheduler thread
                       loop ◀─ Waker ──┘ (one call_soon_threadsafe)

The same client blocks when called from another thread, as dask's does, and a
synchronous client blocks everywhere, in a running event loop too (a notebook
cell). A synchronous client gets a loop only when asked for ``client.loop``:
then one thread runs it (dask's sync client always has one), and in that loop
the client is asynchronous, as dask's.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any, TypeVar

from localsched.aio import await_cell, await_states, waker_for
from localsched.client.dual import TWINS, with_loop
from localsched.client.future import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    DoneAndNotDoneFutures,
    Future,
    FutureCancelledError,
    _to_raise,
    as_completed,
    claim_adopted,
    loading_client,
)
from localsched.client.graph import gathered, replace_futures
from localsched.future_state import FutureState
from localsched.transport import requests as rq
from localsched.units import parse_timedelta

if TYPE_CHECKING:
    from localsched.client.client import Client
    from localsched.deploy.local import LocalCluster

__all__ = ["ClientLoop", "LoopBinding", "close_cluster", "open_cluster"]

T = TypeVar("T")

#: dask's ``distributed.client`` messages, on localsched's logger.
logger = logging.getLogger("localsched.client")


def twin(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        TWINS[name] = function
        return function

    return register


# -- the client's event loop ---------------------------------------------------------


class ClientLoop:
    """``client.loop``: the event loop of a client, with the part of tornado's
    ``IOLoop`` that dask code uses on it (``asyncio_loop``, ``add_callback``,
    ``call_later``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.asyncio_loop = loop
        #: Tasks started by ``add_callback`` (held until done, as asyncio asks).
        self._tasks: set[asyncio.Future[Any]] = set()

    def add_callback(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` in the loop (from any thread); a coroutine
        it returns runs as a task there."""

        def run() -> None:
            result = callback(*args)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        self.asyncio_loop.call_soon_threadsafe(run)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        """Call ``callback(*args)`` in the loop after ``delay`` seconds."""
        return self.asyncio_loop.call_later(delay, callback, *args)

    def time(self) -> float:
        return self.asyncio_loop.time()

    def __repr__(self) -> str:
        return f"<ClientLoop {self.asyncio_loop!r}>"


class LoopBinding:
    """The event loop a client belongs to (``client._aio``)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        is_default_async: bool,
        shown: Any = None,
        thread: threading.Thread | None = None,
    ) -> None:
        self.loop = loop
        #: Made with ``asynchronous=True``: asynchronous outside any running loop
        #: too, as long as its loop is not running (dask's ``in_async_call``).
        self.is_default_async = is_default_async
        #: What ``client.loop`` returns (the tornado IOLoop if given one).
        self.shown = shown if shown is not None else ClientLoop(loop)
        #: The thread running the loop of a synchronous client (stopped at close).
        self.thread = thread

    def in_loop(self) -> bool:
        """dask's ``in_async_call``: is this call made in the client's loop?"""
        running = asyncio._get_running_loop()
        if running is not None:
            return running is self.loop
        return self.is_default_async and not self.loop.is_running()

    def stop(self) -> None:
        """Stop the loop thread of a synchronous client."""
        thread, self.thread = self.thread, None
        if thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(10)
            self.loop.close()


def bind_loop(asynchronous: bool, loop: Any) -> LoopBinding | None:
    """The binding of a new client (None: synchronous, no loop yet).

    Raises
    ------
    RuntimeError
        ``asynchronous=True`` outside a running event loop (dask's message).
    """
    given = getattr(loop, "asyncio_loop", loop)  # a tornado IOLoop, or asyncio's
    if not isinstance(given, asyncio.AbstractEventLoop):
        given = None
    if asynchronous:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "Constructing LoopRunner(asynchronous=True) without a running "
                "loop is not supported"
            ) from None
        return LoopBinding(given or running, True, loop if given else None)
    if given is not None:
        return LoopBinding(given, False, loop)
    return None


def start_loop_thread() -> LoopBinding:
    """A loop running in a thread of its own, for a synchronous ``client.loop``."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="localsched-client-loop", daemon=True)
    thread.start()
    started.wait()
    return LoopBinding(loop, False, thread=thread)


# -- starting and closing --------------------------------------------------------------


async def open_cluster(**kwargs: Any) -> LocalCluster:
    """Start the ``LocalCluster`` of an asynchronous ``Client()`` without
    blocking the event loop (the cluster starts in a thread of its own, which
    ends with the start): the one place where a client starts a cluster, to
    become ``await LocalCluster(asynchronous=True, **kwargs)`` once the
    deployment has one.
    """
    from localsched.deploy.local import LocalCluster

    return await in_thread(lambda: LocalCluster(**kwargs), "cluster-start")


async def close_cluster(cluster: LocalCluster) -> None:
    """Close a cluster started by :func:`open_cluster` without blocking the loop."""
    await in_thread(cluster.close, "cluster-close")


async def in_thread(function: Callable[[], T], what: str) -> T:
    """``function()`` run in a new thread, awaited: for the rare long blocking
    step (a cluster's start or close, retiring or restarting workers), never
    for a request or a result."""
    cell: CellFuture[T] = CellFuture()

    def run() -> None:
        try:
            cell.set_result(function())
        except BaseException as error:
            cell.set_exception(error)

    thread = threading.Thread(target=run, name=f"localsched-{what}")
    thread.start()
    try:
        return await await_cell(cell)
    finally:
        if cell.done():
            thread.join()


async def start_client(
    client: Client, cluster_kwargs: dict[str, Any], timeout: str | float | None
) -> Client:
    """The rest of ``Client(asynchronous=True)`` without a cluster (dask's
    ``_started`` task): start one, then connect."""
    from localsched.client.local_link import LocalLink

    cluster = await open_cluster(**cluster_kwargs)
    if client.status != "newly-created":  # closed while starting
        await close_cluster(cluster)
        return client
    try:
        client._attach(LocalLink(cluster), timeout)
    except BaseException:
        await close_cluster(cluster)
        raise
    return client


async def attach_when_started(
    client: Client, cluster: LocalCluster, timeout: str | float | None
) -> Client:
    """The rest of ``Client(cluster, asynchronous=True)`` on a cluster not yet
    started (``LocalCluster(asynchronous=True)`` never awaited): await it, as
    dask's client does, then connect."""
    from localsched.client.local_link import LocalLink

    await cluster
    if client.status == "newly-created":  # else closed while the cluster started
        client._attach(LocalLink(cluster), timeout)
    return client


class AsyncMixin:
    """The asynchronous protocol of ``Client``: ``await``, ``async with``,
    ``loop``, ``asynchronous`` and ``sync``."""

    _aio: LoopBinding | None
    _started: asyncio.Future[Any] | None
    _previous_as_current: contextvars.Token[Any] | None
    status: str
    close: Callable[..., Any]

    @property
    def loop(self) -> Any:
        """The client's event loop (a ``ClientLoop``, or the IOLoop given).

        A synchronous client starts one in a thread on first use (stopped at
        ``close``), as dask's synchronous client always runs one.
        """
        if self._aio is None:
            self._bind(start_loop_thread())
        assert self._aio is not None
        return self._aio.shown

    def _bind(self, binding: LoopBinding | None) -> None:
        """Belong to ``binding``'s loop: the ``@dual`` methods decide per call
        from now on (the client becomes an instance of ``with_loop(Client)``)."""
        if binding is not None:
            self._aio = binding
            self.__class__ = with_loop(type(self))

    @property
    def asynchronous(self) -> bool:
        """Whether calls made here return awaitables (dask's property)."""
        return self._aio is not None and self._aio.in_loop()

    def sync(
        self,
        func: Callable[..., Any],
        *args: Any,
        asynchronous: bool | None = None,
        callback_timeout: str | float | None = None,
        **kwargs: Any,
    ) -> Any:
        """``func(*args, **kwargs)`` as the caller wants it
        (``distributed.Client.sync``): its awaitable (under
        ``callback_timeout``) in the client's event loop or with
        ``asynchronous=True``, else its value, a coroutine run to its end (in
        the client's loop if it has one running, else in a private loop)."""
        from localsched.client.actor import BaseActorFuture

        timeout = (
            None if callback_timeout is None else parse_timedelta(callback_timeout)
        )
        if asynchronous is None:
            asynchronous = self.asynchronous
        result = func(*args, **kwargs)
        if asynchronous:
            if timeout is not None and asyncio.iscoroutine(result):
                return asyncio.wait_for(result, timeout)
            return result
        if isinstance(result, BaseActorFuture):
            return result.result(timeout)
        if not hasattr(result, "__await__"):
            return result

        async def finish() -> Any:
            return await asyncio.wait_for(_awaited(result), timeout)

        binding = self._aio
        if asyncio._get_running_loop() is not None:
            if asyncio.iscoroutine(result):
                result.close()  # never to run: no "never awaited" warning
            raise RuntimeError(
                "sync(..., asynchronous=False) cannot run a coroutine inside a "
                "running event loop: await it instead"
            )
        if binding is not None and binding.loop.is_running():
            done = asyncio.run_coroutine_threadsafe(finish(), binding.loop)
            return done.result()
        return asyncio.run(finish())

    def __await__(self) -> Generator[Any, None, Any]:
        started = self._started
        if started is not None:
            return started.__await__()

        async def itself() -> Any:
            return self

        return itself().__await__()

    async def __aenter__(self) -> Any:
        from localsched.client.dask_collections import current_client_var

        await self
        if getattr(self, "_set_as_default", False):
            self._previous_as_current = current_client_var.set(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        from localsched.client.dask_collections import current_client_var

        token, self._previous_as_current = self._previous_as_current, None
        if token is not None:
            current_client_var.reset(token)
        await self.close(asynchronous=True)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _within(awaitable: Any, timeout: float | None, what: str) -> Any:
    """``awaitable`` under ``timeout`` seconds; ``TimeoutError`` saying ``what``."""
    if timeout is None:
        return await awaitable
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise TimeoutError(what) from None


# -- futures ---------------------------------------------------------------------------


async def _wait_future(future: Future, timeout: float | None) -> FutureState:
    if future.client._adopted:
        future.client._claim_adopted((future.key,))
    state = future._state
    if not state.done():
        what = f"Future {future.key!r} did not finish within {timeout} seconds"
        await _within(await_states((state,)), timeout, what)
    return state


async def _load(client: Client, keys: list[Any]) -> dict[Any, Any]:
    """Finished results, bound to ``client`` as ``Client.gather`` binds them."""
    if not keys:
        return {}
    link = client._link
    answer = await await_cell(link.request_results(tuple(keys)))
    token = loading_client.set(client)
    try:
        values = link.decode_results(answer)
    finally:
        loading_client.reset(token)
    return {key: client._bound(value) for key, value in values.items()}


@twin("Future.result")
async def future_result(future: Future, timeout: float | None = None) -> Any:
    state = await _wait_future(future, timeout)
    if state.status == "finished":
        return (await _load(future.client, [future.key]))[future.key]
    if state.status == "error":
        assert state.exception is not None
        raise _to_raise(state.exception)
    raise FutureCancelledError(future.key, state.reason)


@twin("Future.exception")
async def future_exception(
    future: Future, timeout: float | None = None
) -> BaseException | None:
    state = await _wait_future(future, timeout)
    return state.exception if state.status == "error" else None


@twin("Future.traceback")
async def future_traceback(future: Future, timeout: float | None = None) -> Any:
    exception = await future_exception(future, timeout)
    return None if exception is None else exception.__traceback__


@twin("Future.cancel")
async def future_cancel(
    future: Future, reason: str | None = None, msg: str | None = None, **kwargs: Any
) -> None:
    await client_cancel(future.client, [future], reason=reason, msg=msg, **kwargs)


@twin("Future.retry")
async def future_retry(future: Future) -> None:
    await client_retry(future.client, [future])


@twin("wait")
async def wait_async(
    futures: list[Any], seconds: float | None, return_when: str
) -> DoneAndNotDoneFutures:
    """``wait``'s coroutine (its arguments checked by ``wait``)."""
    claim_adopted(futures)
    is_enough: Callable[[FutureState], bool] | None = None
    if return_when == FIRST_COMPLETED:
        is_enough = FutureState.done
    elif return_when == FIRST_EXCEPTION:
        is_enough = _has_erred
    else:
        assert return_when == ALL_COMPLETED
    states = [f._state for f in futures]
    count = sum(not s.done() for s in states)
    what = f"{count} futures not done after {seconds} s"
    await _within(await_states(states, is_enough), seconds, what)
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if not f.done()})


def _has_erred(state: FutureState) -> bool:
    return state.status == "error"


def _fails(state: FutureState) -> bool:
    return state.status in ("error", "cancelled")


def wants_await(client: Any) -> bool:
    """Whether ``wait`` is called in an asynchronous client's event loop: the
    client of its futures, else (dask's choice) the default client."""
    from localsched.client.dual import is_async_call

    if client is None:
        from localsched.client.client import default_client

        try:
            client = default_client()
        except ValueError:
            return False
    return is_async_call(client, None)


# -- as_completed -------------------------------------------------------------------


async def as_completed_next(iterator: as_completed) -> Any:
    """``as_completed.__anext__``: the next done future, awaited."""
    deadline = iterator._deadline
    while True:
        with iterator._lock:
            if iterator._ready:
                future = iterator._ready.popleft()
                break
            if not iterator._pending:
                raise StopAsyncIteration
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            iterator._wake = functools.partial(
                waker_for(loop).call_soon, _settle, waiter
            )
        left = None if deadline is None else deadline - time.monotonic()
        try:
            if left is not None and left <= 0:
                raise TimeoutError
            await _within(waiter, left, "")
        except TimeoutError:
            raise TimeoutError(
                f"{iterator.count()} futures not completed in {iterator.timeout} s"
            ) from None
        finally:
            with iterator._lock:
                iterator._wake = None
    if not iterator.with_results:
        return future
    if future.status == "error" and not iterator.raise_errors:
        exception = future._state.exception
        assert exception is not None
        return future, (type(exception), exception, exception.__traceback__)
    if future.status == "cancelled":
        return future, FutureCancelledError(future.key, future._state.reason)
    return future, await future_result(future)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# -- the client's methods ------------------------------------------------------------


async def ask(client: Any, request: rq.Request, timeout: float | None = None) -> Any:
    """The answer to ``request``, awaited (``_ask`` of the blocking methods)."""
    return await _within(
        await_cell(client._link.request(request)),
        timeout,
        f"No answer to {type(request).__name__} within {timeout} s",
    )


@twin("Client.gather")
async def client_gather(
    client: Client, futures: Any, errors: str = "raise", direct: bool | None = None
) -> Any:
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    found: dict[Any, Future] = {}
    replace_futures(futures, _is_future, found)
    claim_adopted(found.values())
    states = [f._state for f in found.values()]
    await await_states(states, _fails if errors == "raise" else None)
    values = await _load(
        client, [k for k, f in found.items() if f.status == "finished"]
    )

    def value_of(future: Future) -> Any:
        if future.key in values:
            return values[future.key]
        return future._result_now()  # raises its error

    return gathered(futures, _is_future, value_of, errors)


def _is_future(obj: object) -> bool:
    return type(obj) is Future


@twin("Client.scatter")
async def client_scatter(
    client: Client,
    data: Any,
    workers: Any = None,
    broadcast: bool = False,
    direct: bool | None = None,
    hash: bool = True,
    timeout: float | None = None,
) -> Any:
    futures, request, rebuild = client._scatter_request(data, workers, broadcast, hash)
    await ask(client, request, timeout)
    return rebuild(futures)


@twin("Client.cancel")
async def client_cancel(
    client: Client,
    futures: Any,
    force: bool = False,
    reason: str | None = None,
    msg: str | None = None,
) -> None:
    request = client._post_cancel(futures, force)
    if request is not None:
        await ask(client, request)


@twin("Client.retry")
async def client_retry(client: Client, futures: Any) -> None:
    await ask(client, client._post_retry(futures))


@twin("Client.close")
async def client_close(client: Client, timeout: float | None = None) -> None:
    started = client._started
    if client.status == "newly-created" and started is not None:
        client.status = "closed"  # the start task closes what it started
        return
    cluster = client._close_client(timeout)
    if cluster is not None:
        await close_cluster(cluster)
    client.status = "closed"


@twin("Client.shutdown")
async def client_shutdown(client: Client) -> None:
    cluster = client.cluster
    if cluster is None:
        shutdown: Any = client.shutdown
        shutdown(asynchronous=False)  # raises its error
    assert cluster is not None
    logger.info("Shutting down scheduler from Client")
    await client_close(client)
    await close_cluster(cluster)


async def gather_graph(client: Client, futures: dict[Any, Future], keys: Any) -> Any:
    """``Client.get``'s results, awaited; the graph's futures released after."""
    from localsched.client.dask_graphs import pack_results

    try:
        results = await client_gather(client, futures)
    finally:
        for future in futures.values():
            future.release()
    return pack_results(keys, results)
