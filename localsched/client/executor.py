"""``ClientExecutor``: a ``concurrent.futures.Executor`` on a localsched client.

``client.get_executor(**submit_kwargs)`` returns one. Its futures are the
standard library's ``concurrent.futures.Future``, so ``concurrent.futures.wait``,
``as_completed``, ``map(..., timeout=)`` and ``shutdown(wait=, cancel_futures=)``
behave as with a ``ProcessPoolExecutor`` (a ``ThreadPoolExecutor`` on a
``processes=False`` cluster):

- ``submit(fn, /, *args, **kwargs)``: every keyword argument is ``fn``'s, even
  ``self``, ``fn`` or ``key``; the executor's options are given once, to
  ``get_executor``;
- a call is *running* once it executes on a worker or is next in line for a
  free thread of the worker it was sent to (as a process pool's call queue):
  ``cancel()`` then returns False and the call runs to its end. Before that,
  ``cancel()`` succeeds and the task is cancelled;
- ``shutdown(cancel_futures=True)`` cancels the calls not running, and waits for
  the others if ``wait``;
- calls are impure by default (each ``submit`` runs, as in the standard library;
  ``pure=True`` shares one key between identical calls, as ``Client.submit``);
- ``initializer(*initargs)`` runs once in each worker process (once in each
  worker thread with ``processes=False``) before the first call of this
  executor there; if it raises, the executor is broken as the standard
  library's: that call and every pending one raise ``BrokenProcessPool``
  (``BrokenThreadPool``), and so does ``submit``;
- errors of the standard library's types where its tests expect them: a
  call's arguments that cannot be pickled give the pickler's own exception; a
  call its worker cannot unpickle, a result the caller cannot unpickle, and a
  call whose workers died (dask's retries: ``KilledWorker`` once it killed
  ``allowed_failures + 1`` workers) give ``BrokenProcessPool`` with the cause
  chained; a call's exception carries the worker's traceback text as its
  ``__cause__``, a ``concurrent.futures.process._RemoteTraceback``.

Unlike a process pool, the workers are the cluster's, shared with the client's
other work and replaced when they die, so a crash breaks the calls it killed,
not the executor; ``max_tasks_per_child`` is validated and accepted, but
workers are not recycled after that many calls.

The localsched future of a call is held until the call is done, then dropped, so
a result lives in the ``concurrent.futures.Future`` only.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, PENDING
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from localsched.client.future import Future, RemoteTraceback
from localsched.client.graph import CannotSerialize, funcname
from localsched.errors import KilledWorker
from localsched.transport import requests as rq
from localsched.units import parse_timedelta
from localsched.worker.execute import LOAD_NOTE

__all__ = ["ClientExecutor"]

logger = logging.getLogger("localsched.client.executor")

#: ``Client.submit`` keywords an executor takes (as distributed's, plus priority).
ALLOWED_KWARGS = frozenset(
    {"pure", "workers", "resources", "allow_other_workers", "retries", "priority"}
)
#: Seconds ``cancel()`` waits for the scheduler's answer before giving up.
CANCEL_TIMEOUT = 30.0


class ClientExecutor(cf.Executor):
    """Run calls on a localsched ``Client`` behind the ``Executor`` interface.

    Parameters
    ----------
    client
        The client the calls are submitted to.
    initializer, initargs
        ``initializer(*initargs)`` runs once per worker process (per worker
        thread on a ``processes=False`` cluster) before this executor's first
        call there, as ``ProcessPoolExecutor``'s.
    max_tasks_per_child
        Validated as ``ProcessPoolExecutor``'s (an integer >= 1) and accepted;
        the cluster's workers are not recycled after that many calls.
    **kwargs
        Passed to every ``submit``/``map``: ``pure``, ``workers``,
        ``resources``, ``allow_other_workers``, ``retries``, ``priority``.

    Examples
    --------
    >>> with client.get_executor() as executor:  # doctest: +SKIP
    ...     list(executor.map(pow, [2, 3], [10, 2]))
    [1024, 9]
    """

    def __init__(
        self,
        client: Any,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - ALLOWED_KWARGS
        if unknown:
            raise TypeError(
                f"unsupported arguments to ClientExecutor: {sorted(unknown)}"
            )
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._client = client
        self._kwargs = {"pure": False, **kwargs}
        cluster = getattr(client, "cluster", None)
        #: Workers are processes (a task's own client: assume so).
        self._processes = bool(getattr(cluster, "processes", True))
        self._broken_type = BrokenProcessPool if self._processes else BrokenThreadPool
        self._initializer = (
            None
            if initializer is None
            else _Initializer(
                initializer, tuple(initargs), uuid.uuid4().hex, self._processes
            )
        )
        self._lock = threading.Lock()
        #: Not-yet-done calls: their localsched futures keep the tasks alive.
        self._pending: dict[cf.Future[Any], Future] = {}
        self._shutdown = False
        #: Set when the initializer failed: the executor takes no more calls.
        self._broken: cf.BrokenExecutor | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the cluster; a ``cf.Future`` of it."""
        self._check_open()
        call = fn if self._initializer is None else _Initialized(self._initializer, fn)
        try:
            future = self._client._submit_call(call, args, kwargs, **self._kwargs)
        except CannotSerialize as exc:
            # As a process pool: the future carries the pickler's own error.
            outer: cf.Future[Any] = cf.Future()
            outer.set_exception(exc.__cause__ or exc)
            return outer
        return self._wrap(future)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: str | float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``map(fn, *iterables)`` on the cluster, results in order.

        Every call is submitted before the first result is asked for. The
        iterator raises ``TimeoutError`` if a result is not there ``timeout``
        seconds after this call, and cancels the calls it has not yielded when
        it is closed early. ``chunksize`` must be at least 1, as for
        ``ProcessPoolExecutor``; localsched batches calls itself.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        self._check_open()
        # A duration string too, as dask's ClientExecutor.map takes.
        seconds = parse_timedelta(timeout)
        end = None if seconds is None else time.monotonic() + seconds
        calls = [list(it) for it in iterables]
        call = fn if self._initializer is None else _Initialized(self._initializer, fn)
        try:
            futures = [
                self._wrap(f) for f in self._client.map(call, *calls, **self._kwargs)
            ]
        except CannotSerialize:
            # Some call cannot be pickled: each call's future says which.
            futures = [self.submit(fn, *args) for args in zip(*calls, strict=False)]

        def results() -> Iterator[Any]:
            # Reversed, so that pop() is cheap and what is left can be cancelled;
            # no name holds a yielded result's future (CPython's issue 14406).
            futures.reverse()
            try:
                while futures:
                    if end is None:
                        yield _result_or_cancel(futures.pop())
                    else:
                        yield _result_or_cancel(futures.pop(), end - time.monotonic())
            finally:
                self._cancel_calls(futures)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls after this; optionally cancel or wait for the others.

        ``cancel_futures`` cancels the calls that are not running (see the
        module docstring). Safe to call more than once.
        """
        with self._lock:
            self._shutdown = True
            pending = dict(self._pending)
        if cancel_futures and pending:
            self._cancel_calls(list(pending))
        if wait:
            cf.wait(list(pending))

    # -- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        with self._lock:
            if self._broken is not None:
                raise self._broken_type(str(self._broken))
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")

    def _wrap(self, future: Future) -> cf.Future[Any]:
        outer = _CallFuture(self)
        with self._lock:
            self._pending[outer] = future

        def on_outer_done(outer: cf.Future[Any]) -> None:
            with self._lock:
                inner = self._pending.pop(outer, None)
            if outer.cancelled() and inner is not None and not inner.done():
                inner.cancel()

        def on_inner_done(inner: Future) -> None:
            try:
                if inner.status == "finished":
                    try:
                        value = inner.result()
                    except BaseException as exc:  # unpickling the result failed
                        self._settle(
                            outer,
                            exception=self._broken_error(
                                "The result of a call could not be unpickled", exc
                            ),
                        )
                    else:
                        self._settle(outer, result=value)
                elif inner.status == "cancelled":
                    _cancel_notified(outer)
                else:
                    self._settle(outer, exception=self._translate(inner.exception()))
            except BaseException as exc:  # reading the outcome failed
                self._settle(outer, exception=exc)

        outer.add_done_callback(on_outer_done)
        future.add_done_callback(on_inner_done)
        return outer

    def _translate(self, exc: BaseException | None) -> BaseException:
        """A call's exception as ``concurrent.futures`` users expect it."""
        if exc is None:
            return RuntimeError("the call failed without an exception")
        if isinstance(exc, KilledWorker):
            return self._broken_error("The workers running a call died", exc)
        if LOAD_NOTE in getattr(exc, "__notes__", ()):
            return self._broken_error("A worker could not unpickle a call", exc)
        if isinstance(exc, cf.BrokenExecutor):  # the initializer failed
            self._break(exc)
            return exc
        if self._processes and isinstance(exc.__cause__, RemoteTraceback):
            exc.__cause__ = _RemoteTraceback(f'\n"""\n{exc.__cause__.text}"""')  # type: ignore[arg-type]
        return exc

    def _broken_error(self, what: str, cause: BaseException) -> BaseException:
        error = self._broken_type(f"{what}: {cause!r}")
        error.__cause__ = cause
        return error

    def _break(self, error: cf.BrokenExecutor) -> None:
        """The initializer failed: every pending call fails, and so will submit."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = error
            pending = list(self._pending)
        for outer in pending:
            inner = self._pending.get(outer)
            self._settle(outer, exception=self._broken_type(str(error)))
            if inner is not None:
                inner.cancel()

    def _settle(
        self,
        outer: cf.Future[Any],
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Set a result or exception unless the future was cancelled meanwhile."""
        try:
            if exception is None:
                outer.set_result(result)
            else:
                outer.set_exception(exception)
        except cf.InvalidStateError:
            pass  # the caller cancelled it first

    def _cancel_calls(self, outers: Iterable[cf.Future[Any]]) -> set[Any]:
        """Cancel these calls unless they run (one question to the scheduler);
        the calls left alone, now marked running unless done."""
        with self._lock:
            calls = {o: self._pending[o] for o in outers if o in self._pending}
        if not calls:
            return set()
        by_key = {inner.key: outer for outer, inner in calls.items()}
        try:
            answer = self._client._link.request(
                rq.CancelPending(keys=tuple(by_key))
            ).result(timeout=CANCEL_TIMEOUT)
        except Exception:  # the scheduler is gone: nothing runs any more
            answer = []
        left = {by_key[key] for key in answer}
        for outer in calls:
            if outer in left:
                _mark_running(outer)
                continue
            with self._lock:  # its task is cancelled already: not again
                self._pending.pop(outer, None)
            _cancel_notified(outer)
        return left


class _CallFuture(cf.Future[Any]):
    """An executor call's future: ``cancel()`` asks the scheduler whether the
    call runs, as a pool's future knows it."""

    def __init__(self, executor: ClientExecutor) -> None:
        super().__init__()
        self._executor = executor

    def cancel(self) -> bool:
        if self.done() or self.running():
            return super().cancel()
        if self in self._executor._cancel_calls([self]):
            return super().cancel()  # False, unless it finished meanwhile
        return _cancel_notified(self) or super().cancel()


def _cancel_notified(outer: cf.Future[Any]) -> bool:
    """Cancel ``outer`` and tell its waiters (``cf.wait`` counts a cancelled
    future as done once notified, as a pool does when it drops the call)."""
    with outer._condition:
        if outer._state == CANCELLED_AND_NOTIFIED:
            return True
        if not cf.Future.cancel(outer):
            return False
        outer.set_running_or_notify_cancel()
        return True


def _mark_running(outer: cf.Future[Any]) -> None:
    """The call runs: ``cancel()`` fails from now on, as in a pool."""
    with outer._condition:
        if outer._state == PENDING:
            outer.set_running_or_notify_cancel()


def _result_or_cancel(future: cf.Future[Any], timeout: float | None = None) -> Any:
    """CPython's: the result, cancelling the call if it is not there in time;
    keeps no reference to the future (nor, so, to its result)."""
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future


# -- the initializer -----------------------------------------------------------------

#: Per worker process: (token, thread or None) -> the initializer's error or None.
_initialized: dict[tuple[str, int | None], BaseException | None] = {}
_initialized_lock = threading.Lock()
_init_locks: dict[tuple[str, int | None], threading.Lock] = {}


class _Initializer:
    """An executor's ``initializer(*initargs)``, run once where its calls run."""

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        token: str,
        per_process: bool,
    ) -> None:
        self.function = function
        self.args = args
        self.token = token
        self.per_process = per_process

    def ensure(self) -> None:
        """Run the initializer here unless it ran; raise if it failed here."""
        where = (self.token, None if self.per_process else threading.get_ident())
        with _initialized_lock:
            lock = _init_locks.setdefault(where, threading.Lock())
        with lock:  # the other threads wait for the first to initialize
            if where not in _initialized:
                try:
                    self.function(*self.args)
                except BaseException as exc:
                    # As concurrent.futures logs it, in the worker (on our
                    # logger: every localsched logger hangs under localsched).
                    logger.critical("Exception in initializer:", exc_info=True)
                    _initialized[where] = exc
                else:
                    _initialized[where] = None
            error = _initialized[where]
        if error is not None:
            kind = BrokenProcessPool if self.per_process else BrokenThreadPool
            raise kind(
                "The executor's initializer failed on a worker, the executor is"
                f" not usable anymore: {error!r}"
            ) from error


class _Initialized:
    """``fn`` behind the executor's initializer (pickled with it)."""

    def __init__(self, initializer: _Initializer, function: Callable[..., Any]) -> None:
        self.initializer = initializer
        self.function = function
        self.__name__ = funcname(function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.initializer.ensure()
        return self.function(*args, **kwargs)
