"""A self-pipe that wakes a thread blocked in ``multiprocessing.connection.wait``.

Producers append to a queue (a ``deque``: its appends are atomic) and call
:meth:`Wakeup.set`; the loop thread waits on :meth:`Wakeup.fileno` among its pipes
and sentinels, calls :meth:`Wakeup.clear`, then drains the queue::

    any thread: queue.append(item); wakeup.set()
    loop:       wait([wakeup, *pipes], timeout); wakeup.clear(); drain queue

``set`` never blocks: the pipe is non-blocking and a full pipe already means "wake
up", so ``BlockingIOError`` is ignored. That is trio's fix for CPython's
``concurrent.futures`` deadlock, where a blocking wakeup write under a lock
stalled the whole executor once the pipe filled (gh-105829). ``set`` also
coalesces: while a byte is pending it writes nothing, so a burst of a million sets
costs one system call.

Ordering: clear before draining the queue. A ``set`` racing with ``clear`` then
either has its item drained this turn or leaves a byte for one spurious wakeup;
it is never lost.
"""

from __future__ import annotations

import os

__all__ = ["Wakeup"]


class Wakeup:
    """Non-blocking, coalescing self-pipe; :meth:`set` is safe from any thread.

    Examples
    --------
    >>> from multiprocessing.connection import wait
    >>> with Wakeup() as wakeup:
    ...     wakeup.set()
    ...     ready = wait([wakeup], timeout=1)
    ...     wakeup.clear()
    >>> ready == [wakeup]
    True
    """

    __slots__ = ("_is_set", "_read_fd", "_write_fd")

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._is_set = False

    def fileno(self) -> int:
        """The read end, for ``wait``/``select``; readable once :meth:`set` ran."""
        return self._read_fd

    @property
    def is_set(self) -> bool:
        """True from :meth:`set` until the next :meth:`clear`."""
        return self._is_set

    def set(self) -> None:
        """Make :meth:`fileno` readable. Never blocks; a no-op once closed."""
        if self._is_set:
            return
        # Unlocked check-then-set: two racing setters may both write; harmless.
        self._is_set = True
        fd = self._write_fd
        if fd < 0:
            return
        try:
            os.write(fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the reader will wake anyway
        except OSError:
            if self._write_fd >= 0:  # EBADF only if close() raced with us
                raise

    def clear(self) -> None:
        """Drain the pipe so that :meth:`fileno` is no longer readable."""
        self._is_set = False  # before draining: see the module docstring
        if self._read_fd < 0:
            return
        try:
            while os.read(self._read_fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close both ends. Idempotent; call it after every setter has stopped."""
        read_fd, write_fd = self._read_fd, self._write_fd
        self._read_fd = self._write_fd = -1
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)

    def __enter__(self) -> Wakeup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._read_fd < 0 else "set" if self._is_set else "clear"
        return f"<Wakeup {state}>"
