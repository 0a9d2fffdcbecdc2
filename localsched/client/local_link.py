"""``LocalLink``: a client's link to the scheduler thread in the same process.

The one runtime module a client imports (``client.Client`` builds it when it
starts or attaches to a ``LocalCluster``); see :mod:`localsched.client.link`
for the protocol it implements.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future as CellFuture
from functools import partial
from typing import TYPE_CHECKING, Any

from localsched.client.link import settled
from localsched.transport import inproc
from localsched.transport.inproc import LocalRef
from localsched.transport.requests import ConnectClient, DisconnectClient, Request
from localsched.transport.shm import BlobRef

if TYPE_CHECKING:
    from localsched.deploy.local import LocalCluster
    from localsched.transport.protocol import Payload

Key = Hashable

__all__ = ["LocalLink"]


class LocalLink:
    """A link to the scheduler thread of a ``LocalCluster`` in this process.

    Posting appends to the runtime's inbox; a request queues the handler's call
    there, behind the events posted before it; results are read from the
    runtime's store in the calling thread (zero-copy for arrays).
    """

    is_shared = False

    def __init__(self, cluster: LocalCluster) -> None:
        from localsched.runtime.handles import ClientHandle
        from localsched.runtime.request_handler import answer

        self.cluster = cluster
        self.in_process = not cluster.processes
        runtime = self._runtime = cluster.runtime
        store = cluster.store
        self._answer = answer
        self._handle_type = ClientHandle
        self._handle: Any = None
        # Bound once: submit and map call these per task.
        self.post = runtime.post
        self.stimulus_id = runtime.stimulus_id
        self.load_result = runtime.load_result
        self.serialize = store.serialize
        self._store = store

    @property
    def is_running(self) -> bool:
        return self._runtime.is_running

    @property
    def has_failed(self) -> bool:
        return self._runtime.failure is not None

    def stopped_error(self) -> Exception:
        return self._runtime.stopped_error()

    def connect(
        self,
        client_id: str,
        states: dict[Key, Any],
        on_restart: Callable[[], Any] | None,
        timeout: float | None,
        on_event: Callable[[], Any] | None = None,
    ) -> str:
        self._handle = self._handle_type(client_id)
        self._handle.states = states
        request = ConnectClient(on_restart=on_restart, on_event=on_event)
        self.request(request).result(timeout=timeout)
        return client_id

    def disconnect(self, timeout: float | None) -> None:
        self.request(DisconnectClient()).result(timeout=timeout)

    def request(self, request: Request) -> CellFuture[Any]:
        if self._handle is None:
            raise RuntimeError("connect() the link before sending requests")
        call = partial(self._answer, self._runtime, self._handle, request)
        return settled(self._runtime.call(call))

    def release(self, payload: Payload) -> None:
        if isinstance(payload, BlobRef):  # inline bytes own nothing
            self._store.release(payload)
        elif isinstance(payload, LocalRef):
            inproc.drop(payload)

    def load_results(self, keys: Iterable[Key]) -> dict[Key, Any]:
        load = self.load_result
        return {key: load(key) for key in keys}

    def request_results(self, keys: tuple[Key, ...]) -> CellFuture[Any]:
        cell: CellFuture[Any] = CellFuture()
        cell.set_result(keys)  # read from the store in the caller's thread
        return cell

    def decode_results(self, answer: Any) -> dict[Key, Any]:
        return self.load_results(answer)

    def current_task(self) -> Key | None:
        return None  # the user's process runs no tasks
