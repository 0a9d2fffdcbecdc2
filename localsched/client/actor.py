"""Actors: stateful objects that live in one worker (``distributed.Actor``).

``client.submit(Counter, actor=True)`` runs ``Counter()`` on a worker, which
keeps the object (``localsched.worker.actors``) instead of handing it to the
scheduler's store; the task's result is an :class:`Actor` handle naming the
class, the worker and the key. A method call on the handle returns an
:class:`ActorFuture` at once; an attribute read returns the value::

    handle.increment() ─▶ ActorCall request ─▶ scheduler thread ─▶ CallActor ─▶ worker
    ActorFuture.result() ◀── (ok, pickled value) ◀── ActorAnswer ◀── actor thread

Every call goes through the caller's link (the client's in the user's process,
the worker's client inside a task), because workers have pipes to the
scheduler only. On the actor's worker, sync methods run one at a time on that
worker's actor thread and coroutine methods on its event loop, as in dask. A
method of an actor that calls another actor of the same worker runs it
directly (:class:`EagerActorFuture`): queuing it behind itself would deadlock.

The handle pickles to ``(cls, address, key)``. In the user's process, the
handle a future's ``result()`` returns also holds a future of the key, so the
actor lives as long as the handle does.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import inspect
import pickle
from collections.abc import Generator, Hashable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from localsched.aio import await_cell
from localsched.client.future import Future, FutureState, _to_raise
from localsched.transport import pickling
from localsched.transport.requests import ActorCall
from localsched.units import parse_timedelta
from localsched.worker.context import thread_state

if TYPE_CHECKING:
    from localsched.client.client import Client

Key = Hashable
T = TypeVar("T")

__all__ = ["Actor", "ActorFuture", "BaseActorFuture", "EagerActorFuture"]

#: Attributes of the handle itself: never forwarded to the actor (also while
#: the handle is half-built, during unpickling or copying).
_OWN = frozenset(("_cls", "_address", "_key", "_client", "_future"))


class Actor:
    """Controls an object living in a worker (``distributed.Actor``).

    Method calls return an :class:`ActorFuture` immediately; attribute reads
    return the attribute's value. Both run on the actor's worker.

    Parameters
    ----------
    cls
        The actor's class.
    address
        The address of the worker keeping the object.
    key
        The key of the task that created it.

    Examples
    --------
    >>> class Counter:
    ...     def __init__(self):
    ...         self.n = 0
    ...     def increment(self):
    ...         self.n += 1
    ...         return self.n
    >>> counter = client.submit(Counter, actor=True).result()  # doctest: +SKIP
    >>> counter.increment().result()  # doctest: +SKIP
    1
    >>> counter.n  # doctest: +SKIP
    1
    """

    def __init__(self, cls: type, address: str, key: Key, worker: Any = None) -> None:
        self._cls = cls
        self._address = address
        self._key = key
        #: The client calls go through, when known (set by ``_bind``).
        self._client: Client | None = None
        #: A future of the key keeping the actor alive (user's process only).
        self._future: Future | None = None

    @property
    def key(self) -> Key:
        """The key of the task whose result the actor is."""
        return self._key

    @property
    def client(self) -> Client:
        """The client that holds this actor."""
        return self._calling_client()

    def _bind(self, client: Client) -> None:
        """Hold the key through ``client`` for as long as this handle lives
        (called by the client that loaded the handle as a result)."""
        if self._future is None:
            self._client = client
            self._future = Future(self._key, client)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Actor, (self._cls, self._address, self._key))

    def __repr__(self) -> str:
        return f"<Actor: {self._cls.__name__}, key={self._key}>"

    def __dir__(self) -> list[str]:
        names = set(dir(type(self)))
        names.update(name for name in dir(self._cls) if not name.startswith("_"))
        return sorted(names)

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:
            raise AttributeError(name)
        future = self._future
        if future is not None and future.status not in ("finished", "pending"):
            raise RuntimeError(
                f"Worker holding Actor was lost.  Status: {future.status}"
            )
        worker = getattr(thread_state, "worker", None)
        if (
            worker is not None
            and getattr(thread_state, "actor", False)
            and worker.address == self._address
        ):
            # An actor method calling an actor of its own worker: run it here,
            # as dask does (the actor thread is busy with the caller).
            return _eager(worker.actors.objects[self._key], name)
        attribute = getattr(self._cls, name, _UNSET)
        if attribute is _UNSET and name.startswith("_"):
            # Private and special names are the class's (copy, pickle and
            # IPython probe them); an AttributeError here, as in dask.
            raise AttributeError(f"{self._cls.__name__!r} has no attribute {name!r}")
        if attribute is not _UNSET and callable(attribute):

            @functools.wraps(attribute)
            def call(*args: Any, **kwargs: Any) -> ActorFuture[Any]:
                kwargs.pop("separate_thread", None)  # dask's option: always one here
                payload = pickling.dumps((args, kwargs), protocol=5)
                return ActorFuture(self._request(name, payload), self._key, name)

            return call
        # A class attribute, a property, or (unlike dask, which only looks at
        # the class) an attribute the object set on itself: read on the worker.
        ok, payload = self._request(name, None).result()
        value = pickle.loads(payload)
        if not ok:
            raise value
        return value

    def _request(self, name: str, args: bytes | None) -> CellFuture[Any]:
        client = self._calling_client()
        cell: CellFuture[Any] = client._link.request(
            ActorCall(key=self._key, name=name, args=args)
        )
        return cell

    def _calling_client(self) -> Client:
        worker = getattr(thread_state, "worker", None)
        if worker is not None:
            from localsched.client.task_client import client_of

            client: Client = client_of(worker)  # in a task or an actor method
            return client
        if self._client is not None and self._client.status == "running":
            return self._client
        from localsched.client.client import default_client

        return default_client()


def _eager(obj: object, name: str) -> Any:
    attribute = getattr(obj, name)
    if inspect.iscoroutinefunction(attribute):
        return attribute
    if callable(attribute):
        return lambda *args, **kwargs: EagerActorFuture(attribute(*args, **kwargs))
    return attribute


class BaseActorFuture(abc.ABC, Generic[T]):
    """Future of an actor's method call (``distributed.BaseActorFuture``).

    See Also
    --------
    Actor
    """

    __slots__ = ()

    @abc.abstractmethod
    def result(self, timeout: str | float | None = None) -> T:
        """Wait for the call's value and return it (re-raise its exception)."""

    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the call has returned or raised."""

    def __repr__(self) -> Literal["<ActorFuture>"]:
        return "<ActorFuture>"


class EagerActorFuture(BaseActorFuture[T]):
    """The value of a call an actor made to an actor of its own worker."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def result(self, timeout: str | float | None = None) -> T:
        return self._value

    def done(self) -> Literal[True]:
        return True

    def __await__(self) -> Generator[Any, None, T]:
        return self._value
        yield  # a generator that returns at once


class ActorFuture(BaseActorFuture[T]):
    """Future of a call to an actor in another thread or process.

    ``wait`` and ``as_completed`` accept it beside futures; it can be awaited
    in an event loop of the caller's.
    """

    __slots__ = ("_cell", "_payload", "_state", "_value")

    def __init__(self, cell: CellFuture[tuple[bool, bytes]], key: Key, name: str):
        self._cell = cell
        self._payload: bytes | None = None
        self._value: Any = _UNSET
        #: Resolved when the answer arrives (``wait``/``as_completed`` use it).
        self._state = FutureState(f"{key}.{name}")
        cell.add_done_callback(self._answered)

    def _answered(self, cell: CellFuture[tuple[bool, bytes]]) -> None:
        # On the thread that received the answer: keep it short.
        error = cell.exception()
        if error is None:
            ok, payload = cell.result()
            if ok:
                self._payload = payload
                self._state.finish(None)
                return
            try:
                error = pickle.loads(payload)
            except Exception as exc:
                error = RuntimeError(f"the actor's exception could not be read: {exc}")
        assert error is not None
        self._state.set_error(error, "")

    @property
    def status(self) -> str:
        """pending, finished or error."""
        return self._state.status

    @property
    def key(self) -> Key:
        return self._state.key

    def done(self) -> bool:
        return self._state.done()

    def cancelled(self) -> bool:
        return False

    def result(self, timeout: str | float | None = None) -> T:
        """Wait for the value and return it; re-raise the method's exception.

        Raises
        ------
        TimeoutError
            No answer within ``timeout`` (seconds, or a string such as ``"1s"``).
        """
        self._wait(timeout)
        state = self._state
        if state.status == "error":
            assert state.exception is not None
            raise _to_raise(state.exception)
        if self._value is _UNSET:
            assert self._payload is not None
            self._value = pickle.loads(self._payload)
            self._payload = None
        value: T = self._value
        return value

    def exception(self, timeout: str | float | None = None) -> BaseException | None:
        """The exception the method raised, or None."""
        self._wait(timeout)
        return self._state.exception

    def _wait(self, timeout: str | float | None) -> None:
        seconds = parse_timedelta(timeout) if timeout is not None else None
        if not self._state.event.wait(seconds):
            raise TimeoutError(f"The actor call did not return within {timeout}")

    def __await__(self) -> Generator[Any, None, T]:
        return self._result_async().__await__()

    async def _result_async(self) -> T:
        if not self._state.done():
            # The cell's first callback (``_answered``) has run once this wakes.
            # ``await_cell``, not ``asyncio.wrap_future``: a cancelled awaiter
            # must leave the cell (the scheduler thread's to answer) alone.
            with contextlib.suppress(Exception):
                await await_cell(self._cell)
        return self.result()


_UNSET: Any = object()
