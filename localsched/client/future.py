"""``Future``, ``wait`` and ``as_completed``: handles to remote results.

A ``Future`` is a key plus the client's ``FutureState`` for that key. The
scheduler thread resolves states (finished, error, cancelled, lost) from the
core's client commands; user threads only wait on them. Every live ``Future``
holds a reference on its key; when the last one is released or garbage
collected, the client tells the scheduler it no longer wants the key.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import copy
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from numbers import Number
from typing import TYPE_CHECKING, Any, NamedTuple

# Re-exported: the cells are the client's API too (``localsched.client.future``).
from localsched.client.dual import is_async_call, twin_call
from localsched.client.result_types import result_type
from localsched.future_state import FutureCancelledError as FutureCancelledError
from localsched.future_state import FutureState as FutureState
from localsched.future_state import RemoteTraceback as RemoteTraceback
from localsched.units import parse_timedelta

if TYPE_CHECKING:
    from localsched.client.client import Client

Key = Hashable


class Future:
    """A remotely running computation (``distributed.Future``).

    Parameters
    ----------
    key
        The key of the task.
    client
        The client that owns the key.

    Examples
    --------
    >>> future = client.submit(inc, 1)  # doctest: +SKIP
    >>> future.result()  # doctest: +SKIP
    2
    """

    _cb_executor_lock = threading.Lock()

    def __init__(
        self, key: Key, client: Client, state: FutureState | None = None
    ) -> None:
        self.key = key
        self.client = client
        self._state = state if state is not None else client._state_for(key)
        client._inc_ref(key)
        self._released = False
        self._generation = getattr(client, "generation", 0)

    @property
    def type(self) -> builtins.type | str | None:
        """The result's type, once known (None before), as in dask.

        The worker sends the type's qualified name, not the pickled result: the
        type is looked up here by that name (imported if need be, as unpickling
        it would). A type that cannot be found by its name in this process (a
        class defined inside a function) is given as that name.
        """
        return result_type(self._state)

    @property
    def status(self) -> str:
        """pending, finished, error, cancelled or lost."""
        return self._state.status

    def done(self) -> bool:
        """Whether the computation finished, erred or was cancelled."""
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def _wait(self, timeout: str | float | None) -> None:
        if self.client._adopted:
            self.client._claim_adopted((self.key,))
        seconds = parse_timedelta(timeout)
        if not self._state.event.wait(seconds):
            raise TimeoutError(
                f"Future {self.key!r} did not finish within {seconds} seconds"
            )

    def result(self, timeout: str | float | None = None) -> Any:
        """Wait for the result and return it; re-raise the task's exception.

        Parameters
        ----------
        timeout
            Seconds, or a duration such as ``"10 ms"`` (dask's strings).

        In the event loop of an asynchronous client, a coroutine (as dask).

        Raises
        ------
        TimeoutError
            The result did not arrive within ``timeout``.
        FutureCancelledError
            The future was cancelled.
        """
        if self.client._aio is not None and is_async_call(self.client, None):
            return twin_call("Future.result", Future._result_now, self, timeout)
        # Not through _result_now: one frame fewer in the caller's traceback.
        self._wait(timeout)
        if self._state.status == "finished":
            return self.client._load_result(self.key)
        raise self._error()

    def __await__(self) -> Any:
        """``await future``: its result, in any event loop."""
        return twin_call("Future.result", Future._result_now, self).__await__()

    def _result_now(self, timeout: str | float | None = None) -> Any:
        self._wait(timeout)
        if self._state.status == "finished":
            return self.client._load_result(self.key)
        raise self._error()

    def _error(self) -> BaseException:
        """What ``result()`` raises for a done future that did not finish.

        Returned, not raised: the caller raises it in its own frame, so the
        traceback shows the caller, then the task's frames (dask's short
        tracebacks), and no frame of ours in between.
        """
        state = self._state
        if state.status == "error":
            assert state.exception is not None
            return _to_raise(state.exception)
        return FutureCancelledError(self.key, state.reason)

    def exception(self, timeout: str | float | None = None) -> BaseException | None:
        """The exception the task raised, or None.

        None too for a cancelled future, as in dask (only ``result()`` raises
        ``CancelledError`` there).
        """
        if self.client._aio is not None and is_async_call(self.client, None):
            return twin_call("Future.exception", Future.exception, self, timeout)
        self._wait(timeout)
        if self._state.status != "error":
            return None
        return self._state.exception

    def traceback(self, timeout: str | float | None = None) -> Any:
        """The traceback of the task's exception (its remote text as a cause)."""
        if self.client._aio is not None and is_async_call(self.client, None):
            return twin_call("Future.traceback", Future.traceback, self, timeout)
        self._wait(timeout)
        exception = self._state.exception if self.status == "error" else None
        return None if exception is None else exception.__traceback__

    def cancel(
        self, reason: str | None = None, msg: str | None = None, **kwargs: Any
    ) -> None:
        """Cancel the task if it has not finished; dependents are cancelled too.

        ``kwargs`` go to ``Client.cancel`` (``force=True`` stops it even if it runs).
        """
        if is_async_call(self.client, kwargs.pop("asynchronous", None)):
            return twin_call(
                "Future.cancel", Future.cancel, self, reason, msg, **kwargs
            )
        self.client._cancel_now([self], reason=reason, msg=msg, **kwargs)

    def retry(self) -> None:
        """Run the task again if it erred."""
        if self.client._aio is not None and is_async_call(self.client, None):
            return twin_call("Future.retry", Future.retry, self)
        self.client._link.request(self.client._post_retry([self])).result()

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` in a separate thread once the future is done."""
        executor = self.client._callback_executor()

        def on_done(_: FutureState) -> None:
            executor.submit(_run_callback, fn, self)

        self._state.add_waiter(on_done)

    def release(self) -> None:
        """Drop this handle's hold on the key (garbage collection does it too)."""
        if not self._released:
            self._released = True
            if getattr(self.client, "generation", 0) == self._generation:
                self.client._dec_ref(self.key)  # else a restart forgot the key

    def __del__(self) -> None:
        # At interpreter shutdown the client may be gone already.
        with contextlib.suppress(Exception):
            self.release()

    def __reduce__(self) -> Any:
        # As dask's: a future pickled inside another object (a persisted
        # collection, a custom class) travels as its key and comes back as a
        # live future of the client where it is unpickled (the worker's client
        # in a task), which does not claim the key: whoever submitted it must
        # keep it alive (dask/distributed#7498).
        return _unpickle_future, (self.key,)

    def __repr__(self) -> str:
        text = f"<Future: {self.status}, key: {self.key!r}"
        if self._state.type:
            text += f", type: {self._state.type}"
        return text + ">"

    def _repr_html_(self) -> str:
        from localsched.reprs import future_html

        return future_html(self)

    def __rich__(self) -> Any:
        from localsched.reprs import future_rich

        return future_rich(self)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.key == self.key


def counted_futures(
    client: Client, keys: list[Key], states: list[FutureState]
) -> list[Future]:
    """Futures of ``keys`` whose references ``client`` counted already.

    ``Future.__init__`` without its per-future lock and lookups, for
    ``Client.map``; it sets the same attributes.
    """
    generation = getattr(client, "generation", 0)
    new = Future.__new__
    futures = []
    for key, state in zip(keys, states, strict=True):
        future = new(Future)
        future.key = key
        future.client = client
        future._state = state
        future._released = False
        future._generation = generation
        futures.append(future)
    return futures


#: The client unpickling results in this context (``Client._load_result``):
#: futures inside them belong to it.
loading_client: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "localsched_loading_client", default=None
)


def _unpickle_future(key: Key) -> Future:
    """A pickled future comes back bound to the client of where it lands: the
    worker's client in a task, else the client loading it, else the current one.
    """
    from localsched.client.task_client import client_of
    from localsched.worker.context import thread_state

    worker = getattr(thread_state, "worker", None)
    client = client_of(worker) if worker is not None else loading_client.get()
    if client is None:
        from localsched.client.dask_collections import current_client

        try:
            client = current_client()
        except ValueError:
            raise RuntimeError(
                f"A localsched Future (key {key!r}) was unpickled where no "
                "Client runs: unpickle it in a task or in a process with a Client"
            ) from None
    return client._adopt(key)


def _to_raise(exception: BaseException) -> BaseException:
    """A copy of a task's exception, to raise in the caller.

    Raising the stored exception itself would hang the caller's frames (which
    hold the future) on its ``__traceback__``, and the client's state keeps it:
    the future could never be released. The copy is made the way unpickling
    made the original, so it works for every exception that got here.
    """
    try:
        raised = copy.copy(exception)
    except Exception:
        return exception
    raised.__cause__ = exception.__cause__
    raised.__suppress_context__ = exception.__suppress_context__
    # The worker's frames (rebuilt by tblib: plain data, no live frames) come
    # first, as dask shows them.
    return raised.with_traceback(exception.__traceback__)


def _run_callback(fn: Callable[[Future], Any], future: Future) -> None:
    try:
        fn(future)
    except Exception:
        import logging

        logging.getLogger("localsched.client.future").exception(
            "Error in callback %r of %r", fn, future
        )


class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"


def wait(
    fs: Any,
    timeout: float | str | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDoneFutures:
    """Wait until all or any of the futures are done.

    Parameters
    ----------
    fs
        A future, an iterable of futures, a dask collection (persisted) or
        nested lists, tuples, sets and dicts of these.
    timeout
        Seconds (or a duration such as ``"2s"``) to wait; ``TimeoutError``
        after that.
    return_when
        ``"ALL_COMPLETED"``, ``"FIRST_COMPLETED"`` or ``"FIRST_EXCEPTION"``.

    Returns
    -------
    DoneAndNotDoneFutures
        Named tuple of ``done`` and ``not_done`` sets.
    """
    seconds: float | None = None
    if isinstance(timeout, str):
        seconds = parse_timedelta(timeout)
    elif isinstance(timeout, Number):
        seconds = float(timeout)
    elif timeout is not None:
        raise TypeError(
            "timeout= keyword received a non-numeric value.\n"
            "Beware that wait expects a list of values\n"
            "  Bad:  wait(x, y, z)\n"
            "  Good: wait([x, y, z])"
        )
    timeout = seconds
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"Unknown return_when {return_when!r}")
    futures = _futures_to_wait_on(fs)
    client = getattr(futures[0], "client", None) if futures else None
    if client is None or client._aio is not None:  # maybe in its event loop
        from localsched.client.asynchronous import wants_await

        if wants_await(client):
            return twin_call("wait", wait, futures, timeout, return_when)
    claim_adopted(futures)

    def stops_early(state: FutureState) -> bool:
        return return_when == FIRST_COMPLETED or (
            return_when == FIRST_EXCEPTION and state.status == "error"
        )

    is_ready, left = _block_until_done(
        futures, None if return_when == ALL_COMPLETED else stops_early, timeout
    )
    if not is_ready:
        raise TimeoutError(f"{left} futures not done after {timeout} s")
    done: set[Future] = set()
    not_done: set[Future] = set()
    for future in futures:  # one pass: a million futures are a second each
        (done if future.done() else not_done).add(future)
    return DoneAndNotDoneFutures(done, not_done)


class as_completed:
    """Iterate over futures in the order they complete.

    Parameters
    ----------
    futures
        Futures to watch; more can be added with ``add`` while iterating.
    with_results
        Yield ``(future, result)`` pairs.
    raise_errors
        With ``with_results``, re-raise a task's exception instead of yielding it.
    timeout
        Seconds after which iteration raises ``TimeoutError``.

    Examples
    --------
    >>> for future in as_completed(futures):  # doctest: +SKIP
    ...     print(future.result())
    """

    def __init__(
        self,
        futures: Iterable[Future] | None = None,
        loop: Any = None,
        with_results: bool = False,
        raise_errors: bool = True,
        *,
        timeout: float | str | None = None,
    ) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        if isinstance(timeout, str):
            timeout = parse_timedelta(timeout)
        self.timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._lock = threading.Condition()
        self._ready: deque[Future] = deque()
        #: One entry per ``add``: a future added twice is yielded twice (dask).
        self._pending: dict[int, Future] = {}
        #: Wakes the coroutine awaiting ``__anext__`` (set while it waits).
        self._wake: Callable[[], None] | None = None
        self._entries = itertools.count()
        for future in futures or ():
            self.add(future)

    def add(self, future: Future) -> None:
        """Watch one more future."""
        from localsched.client.actor import ActorFuture

        if not isinstance(future, Future | ActorFuture):
            raise TypeError(f"Input must be a future, got {future!r}")
        with self._lock:
            entry = next(self._entries)
            self._pending[entry] = future

        def on_done(_: FutureState, future: Future = future) -> None:
            with self._lock:
                if self._pending.pop(entry, None) is not None:
                    self._ready.append(future)
                    self._lock.notify_all()
                    if self._wake is not None:
                        self._wake()

        claim_adopted((future,))
        future._state.add_waiter(on_done)

    def update(self, futures: Iterable[Future]) -> None:
        for future in futures:
            self.add(future)

    def count(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._ready)

    def is_empty(self) -> bool:
        return not self.count()

    def has_ready(self) -> bool:
        with self._lock:
            return bool(self._ready)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._ready.clear()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        """The next done future (``async for``), in any event loop."""
        from localsched.client.asynchronous import as_completed_next

        return await as_completed_next(self)

    def _item(self, future: Future) -> Any:
        if not self.with_results:
            return future
        # As dask: an error not raised is a (type, exception, traceback) triple,
        # and a cancelled future yields its CancelledError, never raises it.
        if future.status == "error" and not self.raise_errors:
            exception = future.exception()
            assert exception is not None
            return future, (type(exception), exception, exception.__traceback__)
        if future.status == "cancelled":
            return future, FutureCancelledError(future.key, future._state.reason)
        if type(future) is Future:
            return future, future._result_now()
        return future, future.result()  # an actor's future

    def __next__(self) -> Any:
        with self._lock:
            while not self._ready:
                if not self._pending:
                    raise StopIteration
                left = (
                    None
                    if self._deadline is None
                    else self._deadline - time.monotonic()
                )
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"{len(self._pending)} futures not completed in "
                        f"{self.timeout} s"
                    )
                self._lock.wait(left)
            future = self._ready.popleft()
        return self._item(future)

    def next_batch(self, block: bool = True) -> list[Any]:
        """Everything ready now (waiting for at least one if ``block``)."""
        if block:
            try:
                first = [next(self)]
            except StopIteration:
                return []
        else:
            first = []
        with self._lock:
            ready = list(self._ready)
            self._ready.clear()
        return first + [self._item(f) for f in ready]

    def batches(self) -> Iterator[list[Any]]:
        """Yield lists of everything that completed since the last batch."""
        while True:
            batch = self.next_batch(block=True)
            if not batch:
                return
            yield batch


def futures_of(obj: Any) -> list[Future]:
    """Futures held in ``obj``: itself, inside lists, tuples, sets and dicts,
    and in the graphs of dask collections (a persisted array or dataframe).

    Examples
    --------
    >>> futures_of([x, {"y": y}])  # doctest: +SKIP
    [<Future: finished, key: x>, <Future: pending, key: y>]
    >>> futures_of(client.persist(array))  # doctest: +SKIP
    [<Future: pending, key: ('ones-...', 0)>, ...]
    """
    return _held(obj, Future)


def _held(obj: Any, kinds: type | tuple[type, ...]) -> list[Any]:
    """The objects of ``kinds`` in ``obj``, walked as :func:`futures_of` does."""
    found: list[Any] = []
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, kinds):
            if id(item) not in seen:
                seen.add(id(item))
                found.append(item)
        elif type(item) in (list, tuple, set, frozenset):
            stack.extend(reversed(list(item)))
        elif type(item) is dict:
            stack.extend(reversed(list(item.values())))
        elif _is_dask_collection(item):
            stack.extend(reversed(list(item.__dask_graph__().values())))
    return found


def _is_dask_collection(obj: Any) -> bool:
    # A dask collection exists only once dask is imported: never import it here.
    dask = sys.modules.get("dask")
    return (
        dask is not None and not isinstance(obj, type) and dask.is_dask_collection(obj)
    )


def _futures_to_wait_on(fs: Any) -> list[Any]:
    """``wait``'s argument as dask takes it (a future, a collection, nested lists
    and dicts), and any other iterable of futures as ``concurrent.futures``.
    Actor futures count too (they have a ``FutureState`` of their own)."""
    from localsched.client.actor import ActorFuture

    kinds = (Future, ActorFuture)
    if (
        isinstance(fs, kinds)
        or type(fs) in (list, tuple, set, frozenset, dict)
        or _is_dask_collection(fs)
    ):
        return _held(fs, kinds)
    return _held(list(fs), kinds)


def claim_adopted(futures: Iterable[Future]) -> None:
    """Ask the scheduler for news of the unpickled futures among ``futures``
    (see ``Client._adopt``) before waiting on them."""
    by_client: dict[int, tuple[Client, list[Key]]] = {}
    for future in futures:
        client = getattr(future, "client", None)  # an actor future has none
        if client is not None and client._adopted:
            by_client.setdefault(id(client), (client, []))[1].append(future.key)
    for client, keys in by_client.values():
        client._claim_adopted(keys)


def fire_and_forget(obj: Any) -> None:
    """Run tasks at least once, even if we release the futures.

    Normally a task with no future left is not run. The special client
    ``"fire-and-forget"`` wants these keys, so the tasks run to completion
    (their results are dropped then, unless a future holds them): useful for
    tasks run for their side effects.

    Parameters
    ----------
    obj
        A future, or lists, tuples, sets and dicts holding futures.

    Examples
    --------
    >>> fire_and_forget(client.submit(func, *args))  # doctest: +SKIP
    """
    found = {f.key: f for f in futures_of(obj)}
    from localsched.scheduler import events as ev

    by_client: dict[int, tuple[Client, list[Key]]] = {}
    for future in found.values():
        entry = by_client.setdefault(id(future.client), (future.client, []))
        entry[1].append(future.key)
    for client, keys in by_client.values():
        link = client._link
        link.post(
            ev.ClientDesiresKeys(
                stimulus_id=link.stimulus_id("client-desires-keys"),
                client="fire-and-forget",
                keys=tuple(keys),
            )
        )


def wait_until_failure(futures: list[Future]) -> None:
    """Wait until every future is done or one of them erred or was cancelled."""
    _block_until_done(
        futures, lambda state: state.status in ("error", "cancelled"), None
    )


def _block_until_done(
    futures: list[Future],
    stops_early: Callable[[FutureState], bool] | None,
    timeout: float | None,
) -> tuple[bool, int]:
    """Block until every future is done, or one that finishes makes
    ``stops_early`` true (None: never), or ``timeout`` passes; (whether it
    ended before the timeout, how many futures were not done then)."""
    states = {id(f._state): f._state for f in futures}
    lock = threading.Lock()
    ready = threading.Event()
    # A count, not a set of the states left: each state calls back exactly
    # once (add_waiter if done, else its resolution), and this runs on the
    # scheduler thread once per finished task.
    remaining = len(states)

    def on_done(state: FutureState) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if not remaining or (stops_early is not None and stops_early(state)):
                ready.set()

    for state in states.values():
        state.add_waiter(on_done)
    if not states:
        ready.set()
    try:
        return ready.wait(timeout), remaining
    finally:
        for state in states.values():
            state.remove_waiter(on_done)
