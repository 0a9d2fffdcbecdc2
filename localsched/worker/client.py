"""``WorkerClient``: the client ``get_client()`` returns inside a task.

It reuses :class:`~localsched.client.Client`'s submit, map, gather and
futures bookkeeping, but instead of posting events to an in-process scheduler
thread it sends them over the worker's pipe (``ClientRequest``); the scheduler
thread answers with ``ClientReply`` and reports its keys' status with
``KeyUpdate``, which the worker's control thread applies to the futures' states.
One such client per worker (``worker-client-<address>``); its graphs carry the
running task as ``submitting_task``, so subtasks run ahead of its siblings.

Values travel inline (``scatter`` and arguments are for small values here).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

import cloudpickle

from localsched.client import Client, _is_future
from localsched.future import Future, FutureState
from localsched.graph import (
    FunctionCache,
    gathered,
    prepare_scatter,
    replace_futures,
)
from localsched.scheduler import events as ev
from localsched.transport import pickling
from localsched.transport.protocol import ClientRequest, KeyUpdate
from localsched.transport.shm import load
from localsched.worker.context import thread_state

if TYPE_CHECKING:
    from localsched.worker.main import Worker

Key = Hashable

__all__ = ["WorkerClient"]


class _InlineStore:
    """Serializes inline: values sent from a task are small."""

    @staticmethod
    def serialize(value: Any) -> bytes:
        return pickling.dumps(value, protocol=5)

    @staticmethod
    def release(payload: Any) -> None:
        pass


class _Handle:
    def __init__(self, client_id: str) -> None:
        self.id = client_id
        self.states: dict[Key, FutureState] = {}


class _PipeRuntime:
    """Stands in for ``SchedulerRuntime`` where ``Client`` posts events."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._ids = itertools.count(1)
        self._stimuli = itertools.count()
        self._lock = threading.Lock()
        self._replies: dict[int, CellFuture[Any]] = {}
        self.arg_blobs_pending: list[Any] = []  # never BlobRef arguments here
        self.is_running = True

    def stimulus_id(self, name: str) -> str:
        return f"{name}-w{next(self._stimuli)}"

    def post(self, *events: ev.StateEvent) -> None:
        for event in events:
            self.request("event", event, reply=False)

    def request(self, op: str, payload: Any, reply: bool = True) -> CellFuture[Any]:
        """Send one request; the cell resolves with the answer (if ``reply``)."""
        cell: CellFuture[Any] = CellFuture()
        request_id = 0
        if reply:
            request_id = next(self._ids)
            with self._lock:
                self._replies[request_id] = cell
        # The sender thread sends: a request may come from the control thread
        # (a future garbage collected there), which must never write.
        self._worker._outbox.post_nowait(
            ClientRequest(
                id=request_id, op=op, payload=pickling.dumps(payload, protocol=5)
            )
        )
        if not reply:
            cell.set_result(None)
        return cell

    def call(self, function: Callable[[], Any]) -> CellFuture[Any]:
        """Running code on the scheduler thread is not possible from a worker."""
        raise RuntimeError(
            "This operation needs the scheduler's process: it is not available "
            "to the client of a task (get_client() inside a task)"
        )

    def barrier(self) -> None:
        """Return once the scheduler handled (and answered) what came before."""
        self.request("ping", None).result()

    def answered(self, request_id: int, ok: bool, payload: Any) -> None:
        """Control thread: a ``ClientReply`` arrived."""
        with self._lock:
            cell = self._replies.pop(request_id, None)
        if cell is None:
            return
        if ok:
            cell.set_result(payload)
        else:
            try:
                error = cloudpickle.loads(payload)
            except Exception as exc:
                error = RuntimeError(f"the scheduler refused the request: {exc!r}")
            cell.set_exception(error)

    def fail_all(self, reason: str) -> None:
        with self._lock:
            replies, self._replies = self._replies, {}
        for cell in replies.values():
            cell.set_exception(RuntimeError(reason))


class WorkerClient(Client):
    """The client of tasks running on one worker (see the module docstring).

    Supports ``submit``, ``map``, ``gather``, ``scatter`` (small values),
    ``cancel``, ``retry`` and futures (``result``, ``done``, release).
    """

    def __init__(self, worker: Worker) -> None:
        # Not Client.__init__: no cluster in this process.
        self.id = f"worker-client-{worker.address}"
        self._owns_cluster = False
        self._worker = worker
        self._runtime = _PipeRuntime(worker)  # type: ignore[assignment]
        self._store = _InlineStore()  # type: ignore[assignment]
        self._handle = _Handle(self.id)  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._refcount: dict[Key, int] = {}
        self._functions = FunctionCache()
        self._callbacks = None
        self.status = "running"

    @property
    def scheduler(self) -> Any:
        raise AttributeError(
            "A task's client has no in-process Scheduler object; use the "
            "client that created the cluster"
        )

    def _graph_event(self, *args: Any, **kwargs: Any) -> ev.UpdateGraph:
        event = super()._graph_event(*args, **kwargs)
        event.submitting_task = getattr(thread_state, "key", None)
        return event

    def _load_result(self, key: Key) -> Any:
        return self._fetch([key])[key]

    def _fetch(self, keys: list[Key]) -> dict[Key, Any]:
        payloads = self._runtime.request("gather", list(keys)).result()
        return {key: load(payload) for key, payload in payloads.items()}

    def gather(
        self,
        futures: Any,
        errors: str = "raise",
        direct: bool | None = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Results of futures, in the same (nested) structure (one round trip)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        found: dict[Key, Future] = {}
        replace_futures(futures, _is_future, found)
        from localsched.future import wait

        wait(list(found.values()))
        finished = [k for k, f in found.items() if f.status == "finished"]
        values = self._fetch(finished) if finished else {}
        return _structure(futures, values, errors, top=True)

    def scatter(
        self,
        data: Any,
        workers: str | Iterable[str] | None = None,
        broadcast: bool = False,
        direct: bool | None = None,
        hash: bool = True,
        timeout: float | None = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Move small values into the cluster; futures in the same structure."""
        self._check_running()
        prepared, rebuild = prepare_scatter(data, self._store.serialize, hash)
        states = {key: self._state_for(key) for key, _ in prepared}
        futures = {key: Future(key, self, state) for key, state in states.items()}
        self._runtime.request("scatter", dict(prepared)).result(timeout)
        return rebuild(futures)

    def cancel(
        self,
        futures: Any,
        asynchronous: bool | None = None,
        force: bool = False,
        reason: str | None = None,
        msg: str | None = None,
    ) -> None:
        """Cancel futures (and everything that depends on them)."""
        found: dict[Key, Future] = {}
        replace_futures(futures, _is_future, found)
        if not found:
            return
        runtime = self._runtime
        runtime.post(
            ev.CancelRequested(
                stimulus_id=runtime.stimulus_id("cancel"),
                client=self.id,
                keys=list(found),
                force=force,
            )
        )
        runtime.barrier()

    def retry(self, futures: Any, asynchronous: bool | None = None) -> None:
        """Run erred futures again (and the erred tasks they depend on)."""
        found: dict[Key, Future] = {}
        replace_futures(futures, _is_future, found)
        runtime = self._runtime
        runtime.post(
            ev.RetryRequested(
                stimulus_id=runtime.stimulus_id("retry"),
                client=self.id,
                keys=list(found),
            )
        )
        runtime.barrier()

    def on_key_update(self, message: KeyUpdate) -> None:
        """Control thread: the scheduler reports a key's new status."""
        state = self._handle.states.get(message.key)
        if state is None:
            return
        status = message.status
        if status == "finished":
            state.finish(message.payload)  # type: ignore[arg-type]
        elif status == "error":
            try:
                exception, text = cloudpickle.loads(message.payload)  # type: ignore[arg-type]
            except Exception as exc:
                exception, text = RuntimeError(f"the task failed: {exc!r}"), ""
            state.set_error(exception, text)
        elif status == "cancelled":
            state.cancel(str(message.payload))
        else:
            state.reset()

    def close(self, timeout: float | None = None) -> None:
        """The worker's client lives as long as its worker: a no-op."""

    def _closed_by_worker(self) -> None:
        self.status = "closed"
        self._runtime.fail_all("the worker is shutting down")
        for state in list(self._handle.states.values()):
            state.cancel("worker-closed")

    def __del__(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<WorkerClient: {self.id!r}>"


def _structure(obj: Any, values: dict[Key, Any], errors: str, top: bool) -> Any:
    """``Client.gather``'s structure with the values fetched already."""

    def value_of(future: Any) -> Any:
        if future.status == "finished" and future.key in values:
            return values[future.key]
        return future.result()

    return gathered(obj, _is_future, value_of, errors, top)
