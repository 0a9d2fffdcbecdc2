"""Actors inside a worker process: the objects, and the threads that call them.

A task submitted with ``actor=True`` returns an object the worker keeps here
(:meth:`ActorHost.adopt`); the scheduler stores only an ``Actor`` handle to it.
The scheduler thread forwards each call of a handle as a
:class:`~localsched.transport.protocol.CallActor`; the control thread hands it
on and never runs user code of a method itself::

    control thread ── CallActor ──▶ method: the actor thread (one per worker, FIFO)
                                    coroutine method: the actor event loop
                                    attribute read: here, at once (as dask reads
                                    it on its event loop)
    scheduler ◀── ActorAnswer (the pickled value or exception) ◀──┘

One thread for every sync method of every actor of this worker, as dask's
``Dask-Actor-Threads`` executor, so an actor needs no lock of its own; its
coroutine methods interleave on one event loop thread. In both, ``get_worker()``
and ``get_client()`` work, and a handle to an actor of this same worker is
called directly (``thread_state.actor``; see ``localsched.client.actor``).
The object is dropped when the scheduler forgets its key (``ForgetKeys``).
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from localsched.transport import pickling
from localsched.transport.protocol import ActorAnswer, CallActor
from localsched.worker.context import thread_state
from localsched.worker.execute import _is_pickled_by_value, dumps_exception

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from localsched.worker.main import Worker

Key = Hashable

__all__ = ["ActorHost"]


class ActorHost:
    """The actor objects of one worker and the threads that call them."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        #: key -> the actor object (``dask_worker.state.actors`` in dask).
        self.objects: dict[Key, object] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._is_closed = False

    # -- task threads ----------------------------------------------------------------

    def adopt(self, key: Key, value: object) -> Any:
        """Keep ``value`` as the actor of ``key``; the handle to send instead."""
        from localsched.client.actor import Actor

        self.objects[key] = value
        return Actor(type(value), self._worker.address, key)

    # -- control thread --------------------------------------------------------------

    def forget(self, keys: Iterable[Key]) -> None:
        objects = self.objects
        for key in keys:
            objects.pop(key, None)

    def call(self, message: CallActor) -> None:
        """Start a call; its answer goes out when it is done."""
        obj = self.objects.get(message.key)
        if obj is None or self._is_closed:
            error = RuntimeError(
                f"Actor {message.key!r} is not on worker {self._worker.address}:"
                " it was released"
            )
            self._worker._outbox.post_nowait(_failed(message.id, error))
            return
        if message.args is None:
            self._worker._outbox.post_nowait(_read(message, obj))
            return
        try:
            method = getattr(obj, message.name)
        except Exception as exc:
            self._worker._outbox.post_nowait(_failed(message.id, exc))
            return
        # asyncio, inspect and the executor load with the first call: a worker
        # without actors starts without them.
        import inspect

        if inspect.iscoroutinefunction(method):
            import asyncio

            asyncio.run_coroutine_threadsafe(
                self._call_async(message, method), self._event_loop()
            )
        else:
            self._thread().submit(self._call, message, method)

    def _thread(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(
                    1,
                    thread_name_prefix="localsched-actor",
                    initializer=self._enter_actor_thread,
                )
            return self._executor

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(
                    target=self._run_loop,
                    args=(loop,),
                    name="localsched-actor-loop",
                    daemon=True,
                )
                self._loop_thread.start()
            return self._loop

    def close(self) -> None:
        """Stop the actor threads (the worker is going); drop the objects."""
        with self._lock:
            self._is_closed = True
            executor, self._executor = self._executor, None
            loop, self._loop = self._loop, None
            thread, self._loop_thread = self._loop_thread, None
        if executor is not None:
            # Not waiting: a method that never returns must not keep the worker.
            executor.shutdown(wait=False, cancel_futures=True)
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(1.0)
        self.objects.clear()

    # -- the actor threads -------------------------------------------------------------

    def _enter_actor_thread(self) -> None:
        state = thread_state
        state.worker = self._worker
        state.actor = True
        state.key = state.run_id = None
        # Not a task thread: secede() (worker_client) has no slot to give up.
        state.seceded = True

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        self._enter_actor_thread()
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, message: CallActor, method: Any) -> None:
        try:
            assert message.args is not None
            args, kwargs = pickle.loads(message.args)
            answer = _answer(message.id, method(*args, **kwargs))
        except BaseException as exc:
            answer = _failed(message.id, exc)
        self._worker._outbox.post(answer)

    async def _call_async(self, message: CallActor, method: Any) -> None:
        try:
            assert message.args is not None
            args, kwargs = pickle.loads(message.args)
            answer = _answer(message.id, await method(*args, **kwargs))
        except BaseException as exc:
            answer = _failed(message.id, exc)
        self._worker._outbox.post(answer)


def _read(message: CallActor, obj: object) -> ActorAnswer:
    try:
        return _answer(message.id, getattr(obj, message.name))
    except BaseException as exc:
        return _failed(message.id, exc)


def _answer(call_id: int, value: object) -> ActorAnswer:
    try:
        payload = pickle.dumps(value, protocol=5)
    except Exception:
        payload = b""
    if not payload or b"__main__" in payload or _is_pickled_by_value(value):
        payload = pickling.dumps(value, protocol=5)  # raises: the call fails
    return ActorAnswer(id=call_id, ok=True, payload=payload)


def _failed(call_id: int, exc: BaseException) -> ActorAnswer:
    payload = dumps_exception(exc) or pickling.dumps(
        RuntimeError(f"{type(exc).__name__} (unpicklable)"), protocol=5
    )
    return ActorAnswer(id=call_id, ok=False, payload=payload)
