"""``PipeLink``: the scheduler link of a worker's tasks (``get_client()``).

The client a task gets is a plain :class:`~localsched.client.client.Client` on this
link, one per worker (``worker-client-<address>``), shared by its tasks. The
link speaks over the worker's own pipe::

    task thread ── post(events) ─────▶ LinkEvents  ──┐
                ── request(Request) ─▶ LinkRequest ──┼─▶ sender thread ─▶ pipe
                   cell ◀── answered() ◀── LinkReply ┐
    futures' states ◀── on_key_update() ◀── KeyUpdate ┴── control thread ◀─ pipe

On the scheduler's side the same request handler answers as for a client in
the user's process (``localsched.runtime.request_handler``), so the client behaves the
same. Differences: values travel inline (``scatter`` and task arguments are
for small values here), and a result is fetched with a ``Gather`` request.

This module imports neither the runtime nor the scheduler core: a worker that
runs ``get_client()`` loads the client, the requests and this link only.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

import cloudpickle

from localsched.errors import ClosedClientError
from localsched.transport import pickling
from localsched.transport.protocol import KeyUpdate, LinkEvents, LinkRequest
from localsched.transport.requests import Gather, Request
from localsched.transport.shm import load
from localsched.worker.context import get_worker, rejoin, secede, thread_state

if TYPE_CHECKING:
    from localsched.client.client import Client
    from localsched.scheduler.events import StateEvent
    from localsched.transport.protocol import Payload
    from localsched.worker.main import Worker

Key = Hashable

__all__ = ["PipeLink", "task_client"]


class PipeLink:
    """A :class:`~localsched.client.link.SchedulerLink` over a worker's pipe."""

    cluster = None
    is_shared = True
    #: A task's calls are pickled: its worker may be another process.
    in_process = False

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._ids = itertools.count(1)
        self._stimuli = itertools.count()
        self._lock = threading.Lock()
        #: request id -> the cell its ``LinkReply`` resolves.
        self._replies: dict[int, CellFuture[Any]] = {}
        self._states: dict[Key, Any] = {}
        self._closed_reason: str | None = None
        self.client_id = f"worker-client-{worker.address}"

    @property
    def is_running(self) -> bool:
        return self._closed_reason is None

    #: A worker's link stops only when its worker does.
    has_failed = False

    def stopped_error(self) -> Exception:
        return ClosedClientError(
            f"The worker's link to the scheduler is closed: {self._closed_reason}"
        )

    def connect(
        self,
        client_id: str,
        states: dict[Key, Any],
        on_restart: Callable[[], Any] | None,
        timeout: float | None,
    ) -> str:
        # The scheduler registers the worker's client on its first message, and
        # names it after the worker (one per worker): ``client_id`` is not used.
        self._states = states
        return self.client_id

    def disconnect(self, timeout: float | None) -> None:
        raise RuntimeError("A task's client closes with its worker")

    def post(self, *events: StateEvent) -> None:
        self._send(LinkEvents(events=pickling.dumps(list(events), protocol=5)))

    def request(self, request: Request) -> CellFuture[Any]:
        cell: CellFuture[Any] = CellFuture()
        request_id = next(self._ids)
        with self._lock:
            if self._closed_reason is not None:
                cell.set_exception(RuntimeError(self._closed_reason))
                return cell
            self._replies[request_id] = cell
        payload = pickling.dumps(request, protocol=5)
        self._send(LinkRequest(id=request_id, request=payload))
        return cell

    def _send(self, message: LinkEvents | LinkRequest) -> None:
        # The sender thread writes: a message may come from the control thread
        # (a future garbage collected there), which must never block on the pipe.
        self._worker._outbox.post_nowait(message)

    def stimulus_id(self, name: str) -> str:
        return f"{name}-w{next(self._stimuli)}"  # renumbered by the scheduler

    def load_result(self, key: Key) -> Any:
        return self.load_results([key])[key]

    def load_results(self, keys: Iterable[Key]) -> dict[Key, Any]:
        payloads = self.request(Gather(keys=tuple(keys))).result()
        return {key: load(payload) for key, payload in payloads.items()}

    @staticmethod
    def serialize(value: Any) -> Payload:
        data: bytes = pickling.dumps(value, protocol=5)
        return data

    @staticmethod
    def release(payload: Payload) -> None:
        pass  # inline bytes own nothing

    def current_task(self) -> Key | None:
        return getattr(thread_state, "key", None)

    # -- the worker's control thread -----------------------------------------------

    def answered(self, request_id: int, ok: bool, payload: bytes) -> None:
        """A ``LinkReply`` arrived: resolve its request's cell."""
        with self._lock:
            cell = self._replies.pop(request_id, None)
        if cell is None:
            return
        try:
            value = cloudpickle.loads(payload)
        except Exception as exc:
            cell.set_exception(
                RuntimeError(f"the scheduler's answer could not be read: {exc!r}")
            )
            return
        if ok:
            cell.set_result(value)
        else:
            cell.set_exception(value)

    def on_key_update(self, message: KeyUpdate) -> None:
        """The scheduler reports a new status of a key of this client."""
        state = self._states.get(message.key)
        if state is None:
            return
        status = message.status
        if status == "finished":
            state.finish(message.payload)
        elif status == "error":
            try:
                exception, text = cloudpickle.loads(message.payload)
            except Exception as exc:
                exception, text = RuntimeError(f"the task failed: {exc!r}"), ""
            state.set_error(exception, text)
        elif status == "cancelled":
            state.cancel(str(message.payload))
        else:
            state.reset()

    def close(self, reason: str) -> None:
        """The worker is going: fail what waits for the scheduler."""
        with self._lock:
            self._closed_reason = reason
            replies, self._replies = self._replies, {}
        for cell in replies.values():
            cell.set_exception(RuntimeError(reason))
        for state in list(self._states.values()):
            state.cancel("worker-closed")


def task_client(worker: Worker) -> tuple[Client, PipeLink]:
    """The client of ``worker``'s tasks, and its link."""
    from localsched.client.client import Client

    link = PipeLink(worker)
    return Client(link=link, set_as_default=False), link


def client_of(worker: Worker) -> Client:
    """The client of ``worker``'s tasks, made on first use. The worker only
    keeps it (and routes its link's replies): it never imports the client."""
    with worker._client_lock:
        client: Client | None = worker._client
        if client is None:
            client, worker._link = task_client(worker)
            worker._client = client
        if worker.owns_process and not worker._drives_dask and "dask" in sys.modules:
            # As in dask, where ``dask.compute`` in a task falls back to
            # ``get_client()``: collections (persisted ones that arrived
            # pickled, too) compute on the cluster. A worker thread in the
            # user's process keeps the user's setting. Only once dask is
            # imported: a task that never uses dask does not pay for it.
            from localsched.client.dask_collections import use_localsched_for_dask

            worker._drives_dask = use_localsched_for_dask()
        return client


def get_client(
    address: Any = None, timeout: Any = None, resolve_address: bool = True
) -> Any:
    """Get a client while within a task (else the default client).

    Inside a task: the worker's client, which submits to the same scheduler over
    the worker's pipe; its subtasks run ahead of the task's siblings.

    Raises
    ------
    ValueError
        Outside a task, when there is no default client and no ``address``.

    Examples
    --------
    >>> def f():
    ...     client = get_client()
    ...     futures = client.map(lambda x: x + 1, range(10))  # spawn many tasks
    ...     return sum(client.gather(futures))
    >>> future = client.submit(f)  # doctest: +SKIP
    """
    worker = getattr(thread_state, "worker", None)
    if worker is not None and not address:
        return client_of(worker)
    from localsched.client.client import Client, default_client

    try:
        client = default_client()
    except ValueError:
        client = None
    if client is not None and (not address or client.scheduler.address == address):
        return client
    if address:
        return Client(address, timeout=timeout)
    raise ValueError("No global client found and no address provided")


@contextlib.contextmanager
def worker_client(timeout: Any = None, separate_thread: bool = True) -> Iterator[Any]:
    """Get a client for this task; the task secedes while it is held.

    Parameters
    ----------
    timeout
        Accepted for dask compatibility.
    separate_thread
        Secede from the worker's thread pool while in the block (and rejoin on
        exit), so that a one-thread worker can run the subtasks waited for.

    Examples
    --------
    >>> def func(x):
    ...     with worker_client() as c:  # connect from worker back to scheduler
    ...         a = c.submit(inc, x)  # this task can submit more tasks
    ...         b = c.submit(dec, x)
    ...         return c.gather([a, b])  # and gather results
    """
    get_worker()
    client = get_client(timeout=timeout)
    with contextlib.ExitStack() as stack:
        if separate_thread:
            try:
                secede()
            except KeyError:  # already seceded
                pass
            else:
                stack.callback(rejoin)
        yield client


def local_client(*args: Any, **kwargs: Any) -> Any:
    """dask's old name of :func:`worker_client` (it warns, as dask's does)."""
    import warnings

    warnings.warn("local_client has moved to worker_client", stacklevel=2)
    return worker_client(*args, **kwargs)
