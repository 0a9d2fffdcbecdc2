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


class FutureState:
    """The status of one key as this client knows it (set by the scheduler thread)."""

    __slots__ = (
        "_waiters",
        "event",
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
        #: Set iff the status is final (finished, error, cancelled).
        self.event = threading.Event()
        self._waiters: list[Callable[[FutureState], None]] = []

    def done(self) -> bool:
        return self.event.is_set()

    def add_waiter(self, callback: Callable[[FutureState], None]) -> None:
        """Call ``callback(self)`` once the state is final (now if it is)."""
        if self.event.is_set():
            callback(self)
            return
        self._waiters.append(callback)
        if self.event.is_set() and callback in self._waiters:
            # Resolved while we appended: make sure it runs exactly once.
            self._waiters.remove(callback)
            callback(self)

    def remove_waiter(self, callback: Callable[[FutureState], None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(callback)

    def _resolve(self, status: str) -> None:
        self.status = status
        self.event.set()
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback(self)

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
        self.event.clear()
        self.status = status
        self.exception = None
        self.traceback_text = ""
