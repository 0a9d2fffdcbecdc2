"""Requests to the scheduler thread that are not scheduling events.

``Client.run`` (a function run on workers outside task scheduling) and the
requests of a worker's own client (``get_client()`` in a task: graph events,
gather, scatter, coordination primitives). Mixed into
:class:`~localsched.runtime.SchedulerRuntime`; everything here runs on the
scheduler thread.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

import cloudpickle

from localsched.runtime_handles import WorkerClientHandle, WorkerHandle
from localsched.scheduler import events as ev
from localsched.transport import pickling
from localsched.transport.protocol import ClientReply, ClientRequest, RunFunction

if TYPE_CHECKING:
    from localsched.runtime import SchedulerRuntime

logger = logging.getLogger("localsched.runtime")

Key = Hashable


class ClientRequests:
    """``SchedulerRuntime``'s handling of ``Client.run`` and workers' clients."""

    def _on_client_request(
        self: SchedulerRuntime,
        handle: WorkerHandle,
        message: ClientRequest,
        events: list[ev.StateEvent],
    ) -> None:
        """A call of the worker's client (``localsched.worker.client``)."""
        client_id = f"worker-client-{handle.address}"
        client = self.clients.get(client_id)
        if not isinstance(client, WorkerClientHandle):
            client = self.clients[client_id] = WorkerClientHandle(handle)
            self.scheduler.handle(
                ev.ClientAdded(
                    stimulus_id=f"client-added-{client_id}", client=client_id
                )
            )
        answer: Any = None
        try:
            payload = cloudpickle.loads(message.payload)
            op = message.op
            if op == "event":
                self._client_event(client, payload, events)
            elif op == "gather":
                data = self.data
                missing = [key for key in payload if key not in data]
                if missing:
                    raise KeyError(f"No result for {missing!r}: released")
                answer = {key: data[key] for key in payload}
            elif op in ("scatter", "ping", "coordination") and events:
                # The core sees (and answers) the events that came before.
                self._handle(events)
                events.clear()
            if op == "scatter":
                who_has: dict[Key, str | None] = {}
                for key, value in payload.items():
                    if key not in self.data:
                        self.data[key] = value
                    who_has[key] = handle.address
                client.watch(payload)
                self.scheduler.update_data(
                    who_has=who_has,
                    nbytes={key: len(value) for key, value in payload.items()},
                    client=client_id,
                )
            elif op == "coordination":
                from localsched.scheduler_extensions import worker_request

                answer = worker_request(self, handle, message.id, client_id, payload)
                if answer is None:
                    return  # a wait: answered once its condition holds
            elif op not in ("event", "gather", "ping"):
                raise ValueError(f"unknown client request {op!r}")
        except Exception as exc:
            logger.debug("Client request %r of %s failed", message.op, handle.address)
            if message.id:
                try:
                    error = pickling.dumps(exc, protocol=5)
                except Exception:
                    error = pickling.dumps(RuntimeError(repr(exc)), protocol=5)
                handle.outbox.append(
                    ClientReply(id=message.id, ok=False, payload=error)
                )
            return
        if message.id:
            handle.outbox.append(ClientReply(id=message.id, ok=True, payload=answer))

    def _client_event(
        self, client: WorkerClientHandle, event: Any, events: list[ev.StateEvent]
    ) -> None:
        if not isinstance(event, WorkerClientHandle.EVENTS):
            raise TypeError(f"a worker's client cannot send {type(event).__name__}")
        event.stimulus_id = self.stimulus_id(event.stimulus_id.rsplit("-", 1)[0])
        if (
            isinstance(event, ev.ClientDesiresKeys)
            and event.client == "fire-and-forget"
        ):
            events.append(event)
            return
        event.client = client.id
        if isinstance(event, ev.UpdateGraph | ev.ClientDesiresKeys):
            client.watch(event.keys)
        elif isinstance(event, ev.ClientReleasesKeys):
            for key in event.keys:
                client.states.pop(key, None)
        events.append(event)

    def start_run(
        self, function: bytes, args: bytes, addresses: list[str]
    ) -> CellFuture[dict[str, tuple[bool, Any, str]]]:
        """Send ``Client.run``'s function to these workers (scheduler thread only).

        The future resolves once each ready one answered or left, to address ->
        (ok, pickled result or exception, traceback text); a worker that left
        answers with an ``OSError`` object instead of bytes.
        """
        cell: CellFuture[dict[str, tuple[bool, Any, str]]] = CellFuture()
        handles = [self.workers.get(a) for a in addresses]
        ready = [h for h in handles if h is not None and h.is_ready]
        if not ready:
            cell.set_result({})
            return cell
        run_id = next(self._run_ids)
        self._runs[run_id] = _PendingRun(cell, {h.address for h in ready})
        for handle in ready:
            handle.outbox.append(
                RunFunction(
                    id=run_id,
                    function=function,
                    args=args,
                    address=handle.address,
                    name=handle.name,
                )
            )
        return cell

    def _run_answered(
        self, run_id: int, address: str, answer: tuple[bool, Any, str]
    ) -> None:
        run = self._runs.get(run_id)
        if run is None or address not in run.waiting:
            return
        run.waiting.discard(address)
        run.answers[address] = answer
        if not run.waiting:
            del self._runs[run_id]
            run.cell.set_result(run.answers)

    def _fail_runs(self: SchedulerRuntime) -> None:
        runs, self._runs = self._runs, {}
        for run in runs.values():
            run.cell.set_exception(self.stopped_error())


class _PendingRun:
    """A ``Client.run`` call: its result cell and the workers yet to answer."""

    __slots__ = ("answers", "cell", "waiting")

    def __init__(self, cell: CellFuture[Any], waiting: set[str]) -> None:
        self.cell = cell
        self.waiting = waiting
        self.answers: dict[str, tuple[bool, Any, str]] = {}
