"""Worker plugins inside a worker process (``Client.register_plugin``).

The control thread hands :class:`~localsched.transport.protocol.AddPlugin` and
:class:`~localsched.transport.protocol.RemovePlugin` to :class:`WorkerPlugins`,
which unpickles the plugin, calls its ``setup(worker)`` / ``teardown(worker)``
and answers with a :class:`~localsched.transport.protocol.FunctionResult` of the
same ``id``. Because the control thread does this before it reads on, every task
that arrives after a plugin sees it.

The ``worker`` given to the hooks is a :class:`WorkerView`: the parts of dask's
``Worker`` that plugins commonly use (``address``, ``name``, ``data``,
``exceptions``, ``tracebacks``, ``state.tasks``, ``plugins``). It records what
happens to tasks only while at least one plugin is registered, so a worker
without plugins pays nothing.

``transition(key, start, finish)`` is called as dask's worker calls it, with the
worker-side state names: ``released -> waiting -> ready`` (or ``constrained``
for tasks with resource restrictions) when a task arrives, ``-> executing`` when
a task thread starts it, ``-> memory`` or ``-> error`` when it ends, and
``-> released`` when the scheduler makes the worker forget it. Calls are
serialized by a lock; a hook that raises is logged and ignored, as in dask.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import threading
import traceback
from collections.abc import Hashable
from typing import Any

from localsched.transport import pickling
from localsched.transport.protocol import AddPlugin, FunctionResult, RemovePlugin
from localsched.worker.execute import dumps_exception

__all__ = ["WorkerPlugins", "WorkerTaskState", "WorkerView"]

logger = logging.getLogger("localsched.worker.plugins")

Key = Hashable


class WorkerTaskState:
    """What a plugin sees of one task in ``worker.state.tasks`` (dask's
    ``distributed.worker_state_machine.TaskState``, in part)."""

    __slots__ = ("exception", "exception_text", "key", "state", "traceback")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.state = "released"
        self.exception: BaseException | None = None
        self.traceback: Any = None
        self.exception_text = ""

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class _State:
    """``worker.state``: ``tasks`` maps key -> :class:`WorkerTaskState`."""

    def __init__(self) -> None:
        self.tasks: dict[Key, WorkerTaskState] = {}


class WorkerView:
    """The ``worker`` argument of ``WorkerPlugin.setup`` / ``teardown``."""

    def __init__(self, nthreads: int) -> None:
        self.address = ""
        self.name: Any = None
        self.nthreads = nthreads
        self.pid = os.getpid()
        self.status = "running"
        #: key -> result of tasks this worker computed that are in memory.
        self.data: dict[Key, Any] = {}
        #: key -> exception of tasks that erred here.
        self.exceptions: dict[Key, BaseException] = {}
        #: key -> traceback of tasks that erred here.
        self.tracebacks: dict[Key, Any] = {}
        self.state = _State()
        #: name -> plugin, as dask's ``Worker.plugins``.
        self.plugins: dict[str, Any] = {}
        #: The worker's ``log_event`` (set by the worker).
        self.log_event_to: Any = None

    def log_event(self, topic: Any, msg: Any) -> None:
        """Log an event under a topic, or each of a list of topics (dask's
        ``Worker.log_event``; see ``Client.log_event``)."""
        if self.log_event_to is None:
            raise RuntimeError("this worker is not connected to a scheduler")
        self.log_event_to(topic, msg)

    @property
    def id(self) -> str:
        return self.address

    def __repr__(self) -> str:
        return f"<Worker {self.address!r}, name: {self.name}, status: {self.status}>"


class WorkerPlugins:
    """The worker's plugins and the bookkeeping their hooks rely on."""

    def __init__(self, nthreads: int) -> None:
        self.worker = WorkerView(nthreads)
        self._lock = threading.RLock()
        #: True while any plugin is registered: the task hooks do nothing otherwise.
        self.active = False

    # -- control thread ------------------------------------------------------------

    def handle(self, message: AddPlugin | RemovePlugin) -> FunctionResult:
        """Add or remove a plugin; the answer for the scheduler."""
        try:
            if isinstance(message, AddPlugin):
                if message.address:
                    self.worker.address = message.address
                    self.worker.name = message.worker_name
                plugin = pickle.loads(message.plugin)
                self.add(plugin, message.name)
            else:
                self.remove(message.name)
        except BaseException as exc:
            error = dumps_exception(exc) or pickling.dumps(
                RuntimeError(f"{type(exc).__name__} (unpicklable)")
            )
            return FunctionResult(
                id=message.id,
                ok=False,
                payload=error,
                traceback_text="".join(traceback.format_exception(exc)),
            )
        return FunctionResult(id=message.id, ok=True, payload=pickling.dumps(None))

    def add(self, plugin: Any, name: str) -> None:
        """dask's ``Worker.plugin_add``: replace (tear down) one of the same name,
        then ``setup``; a failing setup leaves the plugin registered and raises."""
        if name in self.worker.plugins:
            self.remove(name)
        with self._lock:
            self.worker.plugins[name] = plugin
            self.active = True
        logger.info("Starting Worker plugin %s", name)
        setup = getattr(plugin, "setup", None)
        if setup is not None:
            try:
                _resolve(setup(worker=self.worker))
            except Exception:
                logger.exception("Worker plugin %s failed to setup", name)
                raise

    def remove(self, name: str) -> None:
        """dask's ``Worker.plugin_remove``: forget the plugin, then ``teardown``."""
        with self._lock:
            plugin = self.worker.plugins.pop(name)  # KeyError as in dask
            if not self.worker.plugins:
                self.active = False
                self._clear()
        teardown = getattr(plugin, "teardown", None)
        if teardown is not None:
            try:
                _resolve(teardown(worker=self.worker))
            except Exception:
                logger.exception("Worker plugin %s failed to teardown", name)
                raise

    def close(self) -> None:
        """Tear every plugin down (worker closing); never raises."""
        self.worker.status = "closing"
        for name in list(self.worker.plugins):
            with contextlib.suppress(BaseException):  # logged by remove
                self.remove(name)
        self.worker.status = "closed"

    def _clear(self) -> None:
        worker = self.worker
        worker.data.clear()
        worker.exceptions.clear()
        worker.tracebacks.clear()
        worker.state.tasks.clear()

    # -- task hooks (control thread and task threads) --------------------------------

    def _move(self, key: Key, finish: str) -> None:
        """Move ``key`` to ``finish`` and tell the plugins (lock held)."""
        tasks = self.worker.state.tasks
        ts = tasks.get(key)
        if ts is None:
            ts = tasks[key] = WorkerTaskState(key)
        start = ts.state
        if start == finish:
            return
        ts.state = finish
        for name, plugin in list(self.worker.plugins.items()):
            hook = getattr(plugin, "transition", None)
            if hook is None:
                continue
            try:
                hook(key, start, finish)
            except Exception:
                logger.info("Plugin '%s' failed with exception", name, exc_info=True)

    def arrived(self, key: Key, constrained: bool) -> None:
        """A task to run arrived: ``released -> waiting -> ready``."""
        with self._lock:
            if not self.active:
                return
            ts = self.worker.state.tasks.get(key)
            if ts is not None and ts.state not in ("released", "waiting"):
                # A new run of a key this worker saw before (retried, stolen back).
                self._forget_locked(key)
            self._move(key, "waiting")
            self._move(key, "constrained" if constrained else "ready")

    def started(self, key: Key) -> None:
        with self._lock:
            if self.active and key in self.worker.state.tasks:
                self._move(key, "executing")

    def finished(
        self,
        key: Key,
        ok: bool,
        value: Any = None,
        exception: BaseException | None = None,
        tb: Any = None,
        exception_text: str = "",
    ) -> None:
        """The task ended: ``executing -> memory`` or ``executing -> error``."""
        with self._lock:
            if not self.active:
                return
            worker = self.worker
            ts = worker.state.tasks.get(key)
            if ts is None or ts.state != "executing":
                return
            if ok:
                worker.data[key] = value
                self._move(key, "memory")
            else:
                ts.exception = exception
                ts.traceback = tb
                ts.exception_text = exception_text
                if exception is not None:
                    worker.exceptions[key] = exception
                worker.tracebacks[key] = tb
                self._move(key, "error")

    def ended(self, key: Key, outcome: Any, reply: Any) -> None:
        """``finished`` from the worker's outcome and its reply message."""
        if type(reply).__name__ == "TaskDone":
            self.finished(key, True, getattr(outcome, "value", None))
            return
        exception = getattr(outcome, "exception", None)
        if exception is None and reply.exception is not None:
            # the value came back but could not be moved: the reply says why
            with contextlib.suppress(Exception):
                exception = pickle.loads(reply.exception)
        self.finished(
            key,
            False,
            exception=exception,
            tb=getattr(outcome, "traceback", None),
            exception_text=reply.exception_text,
        )

    def cancelled(self, key: Key) -> None:
        """A queued task was taken away (stolen): ``ready -> released``."""
        with self._lock:
            if self.active and key in self.worker.state.tasks:
                self._forget_locked(key)

    def forget(self, keys: tuple[Key, ...]) -> None:
        """The scheduler released these keys here: ``-> released``, data dropped."""
        with self._lock:
            if not self.active:
                return
            for key in keys:
                if key in self.worker.state.tasks:
                    self._forget_locked(key)

    def _forget_locked(self, key: Key) -> None:
        worker = self.worker
        self._move(key, "released")
        worker.data.pop(key, None)
        worker.exceptions.pop(key, None)
        worker.tracebacks.pop(key, None)
        worker.state.tasks.pop(key, None)


def _resolve(result: Any) -> Any:
    """Await ``result`` if a hook was ``async def``."""
    if not inspect.isawaitable(result):
        return result
    import asyncio

    async def finish() -> Any:
        return await result

    return asyncio.run(finish())
