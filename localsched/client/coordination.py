"""Coordination primitives: ``Event``, ``Lock``, ``Semaphore``, ``Variable`` and
``Queue`` (``distributed``'s names, signatures and semantics).

They work from the user's process and from inside tasks (the client
``get_client()`` returns there), which is their main use: objects pickle by
name, so one passed to a task finds the same state. The state lives on the
scheduler thread (``localsched.runtime.coordination_state``); every operation is a
``Coordinate`` request through the client's link, and a wait is a ``WaitFor``
request answered once its condition holds (re-sent every second, so leases a
departed client held are seen to be free).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Self

from localsched.client.dual import dual_of_client
from localsched.client.future import Future
from localsched.errors import ClosedClientError
from localsched.transport import pickling
from localsched.transport.requests import Coordinate, Operation, WaitFor
from localsched.units import parse_timedelta

Key = Hashable

__all__ = ["Event", "Lock", "Queue", "Semaphore", "Variable"]

_NOT_YET = object()
_FIRST_DELAY = 0.001
_MAX_DELAY = 0.05

# -- talking to the scheduler thread -------------------------------------------------


def call(client: Any, operation: str, *args: Any) -> Any:
    """Perform a coordination operation on the scheduler thread for ``client``."""
    request = Coordinate(operation=Operation(operation), args=args)
    return client._link.request(request).result()


#: A waiter is re-registered this often (seconds), so leases freed by a client
#: that went away are seen even though nothing wakes its waiters.
_WAIT_CHUNK = 1.0


class Waiting:
    """One wait registered on the scheduler thread, re-registered every
    :data:`_WAIT_CHUNK` seconds until its deadline (blocking or awaited)."""

    def __init__(
        self, client: Any, method: str, args: tuple[Any, ...], timeout: Any
    ) -> None:
        self.client = client
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.wait_id = uuid.uuid4().hex
        self.request = WaitFor(
            wait_id=self.wait_id, operation=Operation(method), args=args
        )

    def next_chunk(self) -> float:
        """Seconds to wait for the next answer."""
        if self.deadline is None:
            return _WAIT_CHUNK
        return min(_WAIT_CHUNK, max(0.0, self.deadline - time.monotonic()))

    def check_client(self) -> None:
        """Raise if the client closed: nothing answers its waits now."""
        client = self.client
        if client.status != "running":
            raise ClosedClientError(f"Client {client.id} is {client.status}")

    def is_over(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def wait_until(client: Any, method: str, args: tuple[Any, ...], timeout: Any) -> Any:
    """The truthy answer of ``method(*args)`` on the scheduler thread, once it
    gives one; ``_NOT_YET`` if ``timeout`` seconds passed first.

    The scheduler answers a registered waiter when its condition holds; this
    thread waits for that answer (never the scheduler thread).
    """
    waiting = Waiting(client, method, args, timeout)
    while True:
        cell = client._link.request(waiting.request)
        try:
            return cell.result(waiting.next_chunk())
        except TimeoutError:
            pass
        waiting.check_client()
        if not call(client, "wait_cancel", waiting.wait_id):
            return cell.result()  # answered before the cancel landed
        if waiting.is_over():
            return _NOT_YET


class _Pickler(pickling.Pickler):
    def __init__(self, file: Any, keys: dict[Key, None]) -> None:
        super().__init__(file, protocol=5)
        self._keys = keys

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Future):
            self._keys[obj.key] = None
            return ("localsched-future", obj.key)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, futures: dict[Key, Future]) -> None:
        super().__init__(file)
        self._futures = futures

    def persistent_load(self, pid: Any) -> Any:
        tag, key = pid
        if tag != "localsched-future":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._futures[key]


def dumps(value: Any) -> tuple[bytes, tuple[Key, ...]]:
    """``value`` pickled, with the keys of the futures inside it (anywhere)."""
    keys: dict[Key, None] = {}
    buffer = io.BytesIO()
    _Pickler(buffer, keys).dump(value)
    return buffer.getvalue(), tuple(keys)


def loads(client: Any, payload: bytes, keys: tuple[Key, ...], token: str | None) -> Any:
    """Unpickle a stored value; its futures belong to ``client``.

    The client desires the keys before the hand-off hold (``token``) ends.
    """
    return load_many(client, [payload], keys, token)[0]


def load_many(
    client: Any, payloads: list[bytes], keys: tuple[Key, ...], token: str | None
) -> list[Any]:
    """:func:`loads` for several values sharing one hand-off."""
    from localsched.scheduler import events as ev

    futures: dict[Key, Future] = {}
    new: list[Key] = []
    for key in keys:
        with client._lock:
            known = key in client._refcount
        futures[key] = Future(key, client)
        if not known:
            new.append(key)
    if new:
        link = client._link
        link.post(
            ev.ClientDesiresKeys(
                stimulus_id=link.stimulus_id("client-desires-keys"),
                client=client.id,
                keys=tuple(new),
            )
        )
    try:
        return [_Unpickler(io.BytesIO(p), futures).load() for p in payloads]
    finally:
        if token is not None:
            call(client, "handoff_done", token)


def _resolve_client(client: Any) -> Any:
    if client is not None:
        return client
    from localsched.client.task_client import get_client

    return get_client()


class _Primitive:
    """A named primitive; its client is found when first needed."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            with contextlib.suppress(ValueError):
                self._client = _resolve_client(None)
        return self._client

    def _verify_running(self) -> Any:
        client = self.client
        if client is None:
            raise RuntimeError(
                f"{type(self)} object not properly initialized. This can happen"
                " if the object is being deserialized outside of the context of"
                " a Client or Worker."
            )
        return client

    def _call(self, method: str, *args: Any) -> Any:
        return call(self._verify_running(), method, self.name, *args)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


# -- Event --------------------------------------------------------------------------


class Event(_Primitive):
    """Distributed centralized event, like ``asyncio.Event``.

    An event stores a flag, false at first: ``set()`` makes it true, ``clear()``
    false again; ``wait()`` blocks until it is true.

    Parameters
    ----------
    name : str, optional
        Name of the event; the same name is the same event everywhere (a random
        name if not given).
    client : Client, optional
        Client to talk to the scheduler; the current one (in a task, the
        worker's) if not given.

    Examples
    --------
    >>> event = Event("a")  # doctest: +SKIP
    >>> event.wait(timeout=1)  # doctest: +SKIP
    >>> Event("a").set()  # in another process  # doctest: +SKIP
    """

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        super().__init__(name or f"event-{uuid.uuid4().hex}", client)

    @dual_of_client
    def wait(self, timeout: Any = None) -> bool:
        """Wait until the event is set; False if ``timeout`` passed first.

        ``timeout``: seconds, a ``timedelta`` or a string like ``"200ms"``.
        """
        client = self._verify_running()
        seconds = parse_timedelta(timeout)

        return wait_until(client, "event_is_set", (self.name,), seconds) is True

    @dual_of_client
    def clear(self) -> None:
        """Clear the event (its flag is false): waiters block again."""
        self._call("event_clear")

    @dual_of_client
    def set(self) -> None:
        """Set the event (its flag is true): every waiter returns."""
        self._call("event_set")

    @dual_of_client
    def is_set(self) -> bool:
        """Whether the event is set."""
        return bool(self._call("event_is_set"))

    def __reduce__(self) -> Any:
        return (Event, (self.name,))


# -- Semaphore and Lock ---------------------------------------------------------------


class HeldInWith:
    """``with`` (after ``__enter__``) and ``async with`` for a primitive whose
    ``acquire``/``release`` are ``@dual`` (a coroutine when asked for)."""

    acquire: Callable[..., Any]
    release: Callable[..., Any]

    def __exit__(self, *exc: object) -> None:
        self.release(asynchronous=False)

    async def __aenter__(self) -> Self:
        await self.acquire(asynchronous=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release(asynchronous=True)


class Semaphore(HeldInWith, _Primitive):
    """A distributed semaphore: at most ``max_leases`` holders at a time.

    Leases held by a client, or by the tasks of a worker, that goes away are
    freed.

    Parameters
    ----------
    max_leases : int, optional
        Number of leases that can be held at the same time (1).
    name : str, optional
        Name of the semaphore; the same name is the same semaphore everywhere.
    scheduler_rpc, loop
        Accepted for compatibility with ``distributed``; unused.
    client : Client, optional
        Client to talk to the scheduler (the current one if not given).

    Examples
    --------
    >>> sem = Semaphore(max_leases=2, name="database")  # doctest: +SKIP
    >>> with sem:  # doctest: +SKIP
    ...     pass
    """

    def __init__(
        self,
        max_leases: int = 1,
        name: str | None = None,
        scheduler_rpc: Any = None,
        loop: Any = None,
        client: Any = None,
    ) -> None:
        if not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(
                f"max_leases must be a positive integer, got {max_leases!r}"
            )
        super().__init__(name or f"semaphore-{uuid.uuid4().hex}", client)
        self.max_leases = max_leases
        self.id = uuid.uuid4().hex
        self._leases: deque[str] = deque()

    @dual_of_client
    def acquire(self, timeout: Any = None) -> bool:
        """Acquire a lease, waiting up to ``timeout`` (forever if None).

        Returns
        -------
        True if a lease was acquired, False if ``timeout`` passed first.
        """
        return self._acquire(timeout)

    def _acquire(self, timeout: Any) -> bool:
        client = self._verify_running()
        seconds = parse_timedelta(timeout)
        lease_id = uuid.uuid4().hex

        args = (self.name, self.max_leases, lease_id)
        if wait_until(client, "semaphore_acquire", args, seconds) is True:
            self._leases.append(lease_id)
            return True
        return False

    @dual_of_client
    def release(self) -> bool:
        """Release the oldest lease this object holds.

        Raises
        ------
        RuntimeError
            This object holds no lease ("Released too often").
        """
        self._verify_running()
        if not self._leases:
            raise RuntimeError("Released too often")
        lease_id = self._leases.popleft()
        return bool(self._call("semaphore_release", lease_id))

    @dual_of_client
    def get_value(self) -> int:
        """The number of leases currently held."""
        return int(self._call("semaphore_value"))

    def close(self) -> None:
        """Forget the semaphore on the scheduler."""
        self._call("semaphore_close")

    def __enter__(self) -> Semaphore:
        self._acquire(None)
        return self

    def __getstate__(self) -> Any:
        return (self.name, self.max_leases)

    def __setstate__(self, state: Any) -> None:
        name, max_leases = state
        self.__init__(name=name, max_leases=max_leases)  # type: ignore[misc]


def lock_timeout(blocking: bool, timeout: Any) -> Any:
    """``Lock.acquire``'s timeout (0: do not wait)."""
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0
    return timeout


class Lock(Semaphore):
    """A distributed lock (a :class:`Semaphore` with one lease).

    Parameters
    ----------
    name : str, optional
        Name of the lock; the same name is the same lock everywhere.
    scheduler_rpc, loop
        Accepted for compatibility with ``distributed``; unused.
    client : Client, optional
        Client to talk to the scheduler (the current one if not given).

    Examples
    --------
    >>> lock = Lock("x")  # doctest: +SKIP
    >>> lock.acquire(timeout=1)  # doctest: +SKIP
    >>> lock.release()  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str | None = None,
        scheduler_rpc: Any = None,
        loop: Any = None,
        client: Any = None,
    ) -> None:
        super().__init__(
            max_leases=1, name=name or f"lock-{uuid.uuid4().hex}", client=client
        )

    # dask's Lock.acquire(blocking, timeout) is not Semaphore.acquire(timeout):
    # dask's Lock is no Semaphore; ours only reuses its machinery.
    @dual_of_client
    def acquire(  # type: ignore[override]
        self, blocking: bool = True, timeout: Any = None
    ) -> bool:
        """Acquire the lock.

        Parameters
        ----------
        blocking : bool
            If False, do not wait at all (no ``timeout`` allowed then).
        timeout : number, str or timedelta, optional
            Seconds to wait.

        Returns
        -------
        True if the lock was acquired, False otherwise.
        """
        return self._acquire(lock_timeout(blocking, timeout))

    @dual_of_client
    def locked(self) -> bool:
        """Whether someone holds the lock."""
        return int(self._call("semaphore_value")) == 1

    def __getstate__(self) -> Any:
        return self.name

    def __setstate__(self, state: Any) -> None:
        self.__init__(name=state)  # type: ignore[misc]


# -- Variable -----------------------------------------------------------------------


class Variable(_Primitive):
    """A distributed global variable: a value or a future, by name.

    A future stored in a variable keeps its key (and result) alive until the
    variable is set to something else or deleted.

    Parameters
    ----------
    name : str, optional
        Name of the variable; the same name is the same variable everywhere.
    client : Client, optional
        Client to talk to the scheduler (the current one if not given).

    Examples
    --------
    >>> x = Variable("x")  # doctest: +SKIP
    >>> x.set(123)  # doctest: +SKIP
    >>> x.get()  # doctest: +SKIP
    123
    """

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        super().__init__(name or f"variable-{uuid.uuid4().hex}", client)

    @dual_of_client
    def set(self, value: Any, timeout: Any = "30 s", **kwargs: Any) -> None:
        """Set the value: any picklable object, or a future (also inside one)."""
        self._call("variable_set", dumps(value))

    @dual_of_client
    def get(self, timeout: Any = None, **kwargs: Any) -> Any:
        """The value (a future for a stored future), waiting until it is set.

        Raises
        ------
        TimeoutError
            The variable was not set within ``timeout``.
        """
        client = self._verify_running()
        seconds = parse_timedelta(timeout)

        record = wait_until(client, "variable_get", (self.name,), seconds)
        if record is _NOT_YET:
            raise TimeoutError(
                f"Variable {self.name!r} was not set within {timeout} seconds"
            )
        return loads(client, *record)

    @dual_of_client
    def delete(self) -> None:
        """Delete the variable (for every client); its future is released."""
        client = self._verify_running()
        if client.status == "running":
            self._call("variable_delete")

    def __reduce__(self) -> Any:
        return (Variable, (self.name,))


# -- Queue --------------------------------------------------------------------------


def _batch_count(batch: bool | int, timeout: Any) -> int | None:
    """Items ``Queue.get(batch=...)`` takes (None: all there are)."""
    if batch is True:
        return None
    if batch is False:
        return 1
    if timeout is not None:
        raise NotImplementedError(
            "Dask queues don't support simultaneous use of "
            "integer batch sizes and timeouts"
        )
    return int(batch)


class Queue(_Primitive):
    """A distributed FIFO queue of values and futures.

    Futures in the queue keep their keys alive until a ``get`` takes them.

    Parameters
    ----------
    name : str, optional
        Name of the queue; the same name is the same queue everywhere.
    client : Client, optional
        Client to talk to the scheduler (the current one if not given).
    maxsize : int
        Most items the queue holds; ``put`` waits while it is full (0: no limit).

    Examples
    --------
    >>> queue = Queue("x")  # doctest: +SKIP
    >>> queue.put(123)  # doctest: +SKIP
    >>> queue.get()  # doctest: +SKIP
    123
    """

    def __init__(
        self, name: str | None = None, client: Any = None, maxsize: int = 0
    ) -> None:
        super().__init__(name or f"queue-{uuid.uuid4().hex}", client)
        self.maxsize = maxsize
        self._created = False

    def _create(self) -> Any:
        client = self._verify_running()
        if not self._created:
            call(client, "queue_create", self.name, self.maxsize)
            self._created = True
        return client

    @dual_of_client
    def put(self, value: Any, timeout: Any = None, **kwargs: Any) -> None:
        """Put a value or a future at the end, waiting while the queue is full.

        Raises
        ------
        TimeoutError
            The queue stayed full for ``timeout`` seconds.
        """
        client = self._create()
        seconds = parse_timedelta(timeout)
        record = dumps(value)

        args = (self.name, record)
        if wait_until(client, "queue_put", args, seconds) is _NOT_YET:
            raise TimeoutError(f"Queue {self.name!r} stayed full for {timeout} s")

    @dual_of_client
    def get(self, timeout: Any = None, batch: bool | int = False, **kwargs: Any) -> Any:
        """Take the first item, waiting until there is one.

        Parameters
        ----------
        timeout : number, str or timedelta, optional
            Seconds to wait.
        batch : bool or int
            True: every item now in the queue (a list, maybe empty, no wait);
            an int: that many items (a list; no ``timeout`` then); False: one.

        Raises
        ------
        TimeoutError
            Nothing came within ``timeout``.
        """
        client = self._create()
        args = (self.name, _batch_count(batch, timeout))
        got = wait_until(client, "queue_get", args, parse_timedelta(timeout))
        return self._taken(client, got, batch, timeout)

    def _taken(self, client: Any, got: Any, batch: bool | int, timeout: Any) -> Any:
        if got is _NOT_YET:
            raise TimeoutError(f"Nothing came in queue {self.name!r} in {timeout} s")
        records, token = got
        values = load_many(
            client,
            [payload for payload, _ in records],
            tuple({key: None for _, keys in records for key in keys}),
            token,
        )
        return values[0] if batch is False else values

    @dual_of_client
    def qsize(self, **kwargs: Any) -> int:
        """Current number of items in the queue."""
        self._create()
        return int(self._call("queue_qsize"))

    def close(self) -> None:
        """Forget the queue on the scheduler; futures in it are released."""
        client = self._verify_running()
        if client.status == "running":
            self._call("queue_close")

    def __reduce__(self) -> Any:
        return (Queue, (self.name, None, self.maxsize))
