"""``MultiLock``: several named locks taken at once, all or nothing (dask's
``distributed.MultiLock``).

The locks live on the scheduler thread (``localsched.runtime.coordination_state``):
one ``multilock_acquire`` operation there grants ``num_locks`` of the names in
one step or none, so two holders never each take part of what the other needs.
A wait is a ``WaitFor`` request, answered when a release frees enough names.
MultiLock names are their own namespace, apart from :class:`~localsched.Lock`'s
(as in dask).
"""

from __future__ import annotations

import uuid
from typing import Any

from localsched.client.coordination import (
    HeldInWith,
    _Primitive,
    call,
    lock_timeout,
    wait_until,
)
from localsched.client.dual import dual_of_client
from localsched.units import parse_timedelta

__all__ = ["MultiLock"]


class MultiLock(HeldInWith, _Primitive):
    """Distributed centralized lock on several names at once.

    Parameters
    ----------
    names : list of str, optional
        Names of the locks to acquire; the same name is the same lock everywhere.
    client : Client, optional
        Client to talk to the scheduler; the current one (in a task, the
        worker's) if not given.

    Examples
    --------
    >>> lock = MultiLock(["x", "y"])  # doctest: +SKIP
    >>> lock.acquire(timeout=1)  # doctest: +SKIP
    >>> # do things with protected resources 'x' and 'y'
    >>> lock.release()  # doctest: +SKIP
    """

    def __init__(self, names: list[str] | None = None, client: Any = None) -> None:
        self.names = list(names or [])
        super().__init__(",".join(self.names), client)
        self.id = uuid.uuid4().hex
        self._locked = False

    @dual_of_client
    def acquire(
        self, blocking: bool = True, timeout: Any = None, num_locks: int | None = None
    ) -> bool:
        """Acquire the locks, all at once.

        Parameters
        ----------
        blocking : bool, optional
            If False, do not wait at all (no ``timeout`` allowed then).
        timeout : number, str or timedelta, optional
            Seconds to wait (forever if None).
        num_locks : int, optional
            How many of the names to acquire (all of them if None).

        Returns
        -------
        bool
            True if the locks were acquired, False if ``timeout`` passed first.
        """
        return self._acquire(lock_timeout(blocking, timeout), num_locks)

    def _acquire(self, timeout: Any, num_locks: int | None) -> bool:
        client = self._verify_running()
        args = self._acquire_args(num_locks)
        seconds = parse_timedelta(timeout)
        self._locked = wait_until(client, "multilock_acquire", args, seconds) is True
        return self._locked

    def _acquire_args(self, num_locks: int | None) -> tuple[Any, ...]:
        return (tuple(self.names), num_locks or len(self.names), self.id)

    @dual_of_client
    def release(self) -> bool:
        """Release the locks.

        Raises
        ------
        ValueError
            The locks are not held ("Lock is not yet acquired").
        """
        if not self.locked():
            raise ValueError("Lock is not yet acquired")
        released = bool(call(self._verify_running(), "multilock_release", self.id))
        self._locked = False
        return released

    def locked(self) -> bool:
        """Whether this object holds its locks."""
        return self._locked

    def __enter__(self) -> MultiLock:
        self._acquire(None, None)
        return self

    def __reduce__(self) -> Any:
        return (type(self), (self.names,))
