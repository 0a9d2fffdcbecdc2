"""Waking asyncio code from the scheduler thread, batched.

Results arrive on the scheduler thread (or, in a task, on the worker's control
thread). An awaiting coroutine must resume on its own event loop, and the only
thread-safe way in is ``loop.call_soon_threadsafe``, which writes to the loop's
self-pipe: one system call and one loop iteration per call. A :class:`Waker`
(one per event loop) queues callbacks and calls ``call_soon_threadsafe`` only
when none is pending, so a burst of 10,000 results costs a few wake-ups::

    scheduler thread                          event loop thread
    state resolved ─▶ Waker.call_soon(cb) ─┐
    state resolved ─▶ Waker.call_soon(cb) ─┤  (queued: no syscall)
                                           └─▶ _drain(): cb(), cb(), ...

No thread of ours and no event loop of ours: the caller's loop does the
waiting. Used by the client's asynchronous surface
(:mod:`localsched.client.asynchronous`) and usable by any layer (a
deployment's asynchronous start awaits its cells with :func:`await_cell`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future as CellFuture
from concurrent.futures import InvalidStateError
from typing import Any, TypeVar

from localsched.future_state import FutureState

__all__ = ["Waker", "await_cell", "await_states", "fulfil", "new_cell", "waker_for"]

T = TypeVar("T")

_wakers_lock = threading.Lock()
#: One waker per event loop (weakly: a closed, dropped loop takes its waker).
_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Waker] = (
    weakref.WeakKeyDictionary()
)


class Waker:
    """Runs callbacks on one event loop, called from any thread, batched."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        #: Callbacks queued since the last drain; a drain is scheduled iff
        #: ``_is_scheduled`` (so at most one ``call_soon_threadsafe`` is in flight).
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._is_scheduled = False
        #: ``call_soon_threadsafe`` calls made (the tests count wake-ups).
        self.wakeups = 0

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop soon; callable from any thread."""
        with self._lock:
            self._pending.append((callback, args))
            if self._is_scheduled:
                return
            self._is_scheduled = True
            self.wakeups += 1
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody awaits any more
            with self._lock:
                self._pending.clear()
                self._is_scheduled = False

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._is_scheduled = False
        for callback, args in pending:
            callback(*args)


def waker_for(loop: asyncio.AbstractEventLoop | None = None) -> Waker:
    """The :class:`Waker` of ``loop`` (default: the running loop)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    waker = _wakers.get(loop)
    if waker is None:
        with _wakers_lock:
            waker = _wakers.get(loop)
            if waker is None:
                waker = _wakers[loop] = Waker(loop)
    return waker


def new_cell() -> CellFuture[Any]:
    """A ``concurrent.futures.Future`` that nobody can cancel.

    It is "running" from birth, so ``cancel()`` returns False: a caller that
    gives up (``asyncio.wrap_future`` cancels its source when the awaiting
    coroutine is cancelled) leaves it alone, and the thread that answers it
    (the scheduler thread) never meets a cancelled cell.
    """
    cell: CellFuture[Any] = CellFuture()
    cell.set_running_or_notify_cancel()
    return cell


def fulfil(cell: CellFuture[Any], function: Callable[[], Any]) -> None:
    """Set ``cell`` to the outcome of ``function()``, never raising.

    A cell already done (cancelled by its caller before it was marked running,
    or answered elsewhere) keeps what it has: setting it would raise
    ``InvalidStateError`` on the answering thread, and the scheduler thread
    must not die of a caller that stopped waiting.
    """
    try:
        value = function()
    except BaseException as exc:  # handed to whoever waits on the cell
        with contextlib.suppress(InvalidStateError):
            cell.set_exception(exc)
    else:
        with contextlib.suppress(InvalidStateError):
            cell.set_result(value)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _copy_cell(cell: CellFuture[Any], waiter: asyncio.Future[Any]) -> None:
    if waiter.done():  # the awaiting coroutine was cancelled
        return
    error = cell.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(cell.result())


async def await_cell(cell: CellFuture[T]) -> T:
    """The answer of a ``concurrent.futures.Future`` (a link's request cell),
    awaited without a thread: its completion wakes this loop through its
    :class:`Waker`. Cancelling the awaiting coroutine leaves the cell alone."""
    if cell.done():
        return cell.result()
    loop = asyncio.get_running_loop()
    waker = waker_for(loop)
    waiter: asyncio.Future[T] = loop.create_future()
    cell.add_done_callback(lambda done: waker.call_soon(_copy_cell, done, waiter))
    return await waiter


async def await_states(
    states: Iterable[FutureState],
    is_enough: Callable[[FutureState], bool] | None = None,
) -> None:
    """Return once every state is done, or one for which ``is_enough(state)``.

    One wake-up for all of them: the countdown runs on the thread that
    resolves the states, and only the last (or an ``is_enough``) one wakes the
    loop. Cancelling the awaiting coroutine only unregisters it.
    """
    unique = {id(s): s for s in states}
    remaining = {key for key, state in unique.items() if not state.done()}
    if not remaining:
        return
    if is_enough is not None and any(is_enough(s) for s in unique.values()):
        return
    loop = asyncio.get_running_loop()
    waker = waker_for(loop)
    waiter: asyncio.Future[None] = loop.create_future()
    lock = threading.Lock()

    def on_done(state: FutureState) -> None:
        with lock:
            remaining.discard(id(state))
            if remaining and (is_enough is None or not is_enough(state)):
                return
        waker.call_soon(_settle, waiter)

    pending = [unique[key] for key in remaining]
    for state in pending:
        state.add_waiter(on_done)
    try:
        await waiter
    finally:
        for state in pending:
            state.remove_waiter(on_done)
