"""``ClientExecutor``: a ``concurrent.futures.Executor`` on a localsched client.

``client.get_executor(**submit_kwargs)`` returns one. Its futures are the
standard library's ``concurrent.futures.Future``, so ``concurrent.futures.wait``,
``as_completed``, ``map(..., timeout=)`` and ``shutdown(wait=, cancel_futures=)``
behave as with a ``ProcessPoolExecutor``:

- a future stays pending until its task is done (``cancel()`` succeeds until
  then, and cancels the task);
- calls are impure by default (each ``submit`` runs, as in the standard library;
  ``pure=True`` shares one key between identical calls, as ``Client.submit``);
- ``shutdown(wait=False)`` leaves submitted work running, ``cancel_futures=True``
  cancels what has not finished.

The localsched future of a call is held until the call is done, then dropped, so
a result lives in the ``concurrent.futures.Future`` only.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from localsched.client.future import Future

__all__ = ["ClientExecutor"]

#: ``Client.submit`` keywords an executor takes (as distributed's, plus priority).
ALLOWED_KWARGS = frozenset(
    {"pure", "workers", "resources", "allow_other_workers", "retries", "priority"}
)


class ClientExecutor(cf.Executor):
    """Run calls on a localsched ``Client`` behind the ``Executor`` interface.

    Parameters
    ----------
    client
        The client the calls are submitted to.
    **kwargs
        Passed to every ``submit``/``map``: ``pure``, ``workers``,
        ``resources``, ``allow_other_workers``, ``retries``, ``priority``.

    Examples
    --------
    >>> with client.get_executor() as executor:  # doctest: +SKIP
    ...     list(executor.map(pow, [2, 3], [10, 2]))
    [1024, 9]
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        unknown = set(kwargs) - ALLOWED_KWARGS
        if unknown:
            raise TypeError(
                f"unsupported arguments to ClientExecutor: {sorted(unknown)}"
            )
        self._client = client
        self._kwargs = {"pure": False, **kwargs}
        self._lock = threading.Lock()
        #: Not-yet-done calls: their localsched futures keep the tasks alive.
        self._pending: dict[cf.Future[Any], Future] = {}
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the cluster; a ``cf.Future`` of it."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        future = self._client.submit(fn, *args, **self._kwargs, **kwargs)
        return self._wrap(future)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``map(fn, *iterables)`` on the cluster, results in order.

        Every call is submitted before the first result is asked for. The
        iterator raises ``TimeoutError`` if a result is not there ``timeout``
        seconds after this call, and cancels the calls it has not yielded when
        it is closed early. ``chunksize`` is accepted and ignored: localsched
        batches calls itself.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        end = None if timeout is None else time.monotonic() + timeout
        calls = [list(it) for it in iterables]
        futures = [self._wrap(f) for f in self._client.map(fn, *calls, **self._kwargs)]

        def results() -> Iterator[Any]:
            # Reversed, so that pop() is cheap and what is left can be cancelled.
            futures.reverse()
            try:
                while futures:
                    future = futures.pop()
                    if end is None:
                        yield future.result()
                    else:
                        yield future.result(end - time.monotonic())
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls after this; optionally cancel or wait for the others.

        Safe to call more than once.
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            cf.wait(pending)

    def _wrap(self, future: Future) -> cf.Future[Any]:
        outer: cf.Future[Any] = cf.Future()
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
                    _settle(outer, "result", inner.result())
                elif inner.status == "cancelled":
                    if outer.cancel():
                        outer.set_running_or_notify_cancel()
                else:
                    _settle(outer, "exception", inner.exception())
            except BaseException as exc:  # loading the result failed
                _settle(outer, "exception", exc)

        outer.add_done_callback(on_outer_done)
        future.add_done_callback(on_inner_done)
        return outer


def _settle(outer: cf.Future[Any], how: str, value: Any) -> None:
    """Set a result or exception unless the future was cancelled meanwhile."""
    try:
        if how == "result":
            outer.set_result(value)
        else:
            outer.set_exception(value)
    except cf.InvalidStateError:
        pass  # the caller cancelled it first
