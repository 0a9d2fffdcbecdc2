"""The result cell of one key, shared by the scheduler thread and the client.

The scheduler thread resolves a :class:`FutureState` (finished, error,
cancelled, lost) from the core's client commands; user threads only wait on it
through :class:`~localsched.client.future.Future`. It lives apart from the
client so that the runtime, which sets it, does not import the client.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Hashable

Key = Hashable

__all__ = ["FutureCancelledError", "FutureState", "RemoteTraceback"]


class FutureCancelledError(concurrent.futures.CancelledError):
    """The future was cancelled (by ``cancel``, a restart, or forgetting it)."""

    def __init__(
        self, key: Key, reason: str | None = None, msg: str | None = None
    ) -> None:
        self.key = key
        self.reason = reason or "unknown"
        self.msg = msg
        super().__init__(key, self.reason)

    def __str__(self) -> str:
        text = f"{self.key!r} cancelled for reason: {self.reason}."
        return f"{text} {self.msg}" if self.msg else text


class RemoteTraceback(Exception):
    """Carries the worker's traceback text as the ``__cause__`` of an error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


#: Guards the lazily made parts of every ``FutureState`` (its event and its
#: waiter list) against the scheduler thread resolving it meanwhile. One lock
#: for all states: a state is touched by at most a waiter and the resolver, for
#: a few instructions, and a lock per state would cost 1 KB per future (a
#: ``threading.Event`` is a lock, a condition and a deque).
_LAZY = threading.Lock()


class FutureState:
    """The status of one key as this client knows it (set by the scheduler thread).

    A million of these can be alive (``client.map``), so a state holds plain
    values only: the ``threading.Event`` to block on and the list of waiters
    are made when someone first waits or adds a callback.
    """

    __slots__ = (
        "_done",
        "_event",
        "_waiters",
        "exception",
        "key",
        "reason",
        "status",
        "traceback_text",
        "type",
        "type_object",
    )

    def __init__(self, key: Key) -> None:
        self.key = key
        #: pending, finished, error, cancelled or lost.
        self.status = "pending"
        self.exception: BaseException | None = None
        self.traceback_text = ""
        #: Qualified name of the result's type (``"numpy.ndarray"``), once known.
        self.type: str | None = None
        #: ``(name, type)``: the type ``type`` names, once looked up by the
        #: client (``client/result_types.py``); stale when ``type`` changes.
        self.type_object: tuple[str, object] | None = None
        self.reason: str | None = None
        #: True iff the status is final (finished, error, cancelled).
        self._done = False
        #: Made by the first ``event`` read; set iff ``_done``.
        self._event: threading.Event | None = None
        #: Callbacks for when the state is final: None while there are none,
        #: the callback itself while there is one (``wait`` on a million
        #: futures then makes no list per future), else a list of them.
        self._waiters: (
            Callable[[FutureState], None] | list[Callable[[FutureState], None]] | None
        ) = None

    @property
    def event(self) -> threading.Event:
        """Set iff the status is final: block on it with ``event.wait()``."""
        event = self._event
        if event is None:
            with _LAZY:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
                    if self._done:
                        event.set()
        return event

    def done(self) -> bool:
        return self._done

    def add_waiter(self, callback: Callable[[FutureState], None]) -> None:
        """Call ``callback(self)`` once the state is final (now if it is)."""
        with _LAZY:
            if not self._done:
                waiters = self._waiters
                if waiters is None:
                    self._waiters = callback
                elif type(waiters) is list:
                    waiters.append(callback)
                else:
                    self._waiters = [waiters, callback]  # type: ignore[list-item]
                return
        callback(self)  # outside the lock: it may wait on other states

    def remove_waiter(self, callback: Callable[[FutureState], None]) -> None:
        with _LAZY:
            waiters = self._waiters
            if type(waiters) is list:
                with contextlib.suppress(ValueError):
                    waiters.remove(callback)
            elif waiters is not None and waiters == callback:
                self._waiters = None

    def _resolve(self, status: str) -> None:
        self.status = status
        with _LAZY:
            self._done = True
            event = self._event
            waiters, self._waiters = self._waiters, None
        if event is not None:
            event.set()
        if waiters is not None:
            _call_waiters(self, waiters)

    def finish(self, type_name: str | None) -> None:
        self.type = type_name
        self._resolve("finished")

    def set_error(self, exception: BaseException, traceback_text: str) -> None:
        self.exception = exception
        self.traceback_text = traceback_text
        self._resolve("error")

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self._resolve("cancelled")

    def reset(self, status: str = "pending") -> None:
        """Lost data or a retry: the key will be computed again."""
        with _LAZY:
            self._done = False
            if self._event is not None:
                self._event.clear()
        self.status = status
        self.exception = None
        self.traceback_text = ""


def _call_waiters(
    state: FutureState,
    waiters: Callable[[FutureState], None] | list[Callable[[FutureState], None]],
) -> None:
    """Call back the waiters taken from a state just resolved."""
    if type(waiters) is list:
        for callback in waiters:
            callback(state)
    else:
        waiters(state)  # type: ignore[operator]
