"""Actor calls on the scheduler thread: routing a call to the actor's worker.

An actor's object lives in one worker process (``localsched.worker.actors``);
clients, in the user's process or in a task, reach the scheduler thread only::

    Actor.method(...) ── ActorCall request ──▶ start() ── CallActor ──▶ the worker
    ActorFuture ◀── link answer ◀── cell ◀── answered() ◀── ActorAnswer ──┘

The worker is the one the core records as holding the actor's key
(``ts.who_has``). A call whose worker leaves before answering fails with
dask's ``"Worker holding Actor was lost"``; so does a call to an actor the core
erred for that reason. Everything here runs on the scheduler thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING

from localsched.aio import new_cell
from localsched.scheduler.transitions import ACTOR_LOST as LOST
from localsched.transport.protocol import CallActor

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

Key = Hashable

__all__ = ["LOST", "ActorCalls", "actor_calls_of"]


class ActorCalls:
    """The calls sent to actors' workers and not yet answered."""

    def __init__(self, runtime: SchedulerRuntime) -> None:
        self._runtime = runtime
        self._ids = itertools.count(1)
        #: call id -> (the cell the answer resolves, the worker's address).
        self._pending: dict[int, tuple[CellFuture[tuple[bool, bytes]], str]] = {}

    def start(
        self, key: Key, name: str, args: bytes | None
    ) -> CellFuture[tuple[bool, bytes]]:
        """Send the call to the worker holding ``key``'s actor; its answer cell.

        Raises
        ------
        RuntimeError
            The actor is gone: released, erred, or its worker left.
        """
        runtime = self._runtime
        ts = runtime.scheduler.state.tasks.get(key)
        if ts is None or not ts.actor:
            raise RuntimeError(
                f"Actor {key!r} is gone: every future of it was released"
            )
        if ts.state != "memory" or not ts.who_has:
            reason = f"{LOST}.  Status: {ts.state}"
            raise RuntimeError(reason)
        address = next(iter(ts.who_has)).address
        handle = runtime.workers.get(address)
        if handle is None:
            raise RuntimeError(f"{LOST}: {address} left")
        call_id = next(self._ids)
        cell: CellFuture[tuple[bool, bytes]] = new_cell()
        self._pending[call_id] = (cell, address)
        handle.outbox.append(CallActor(id=call_id, key=key, name=name, args=args))
        return cell

    def answered(self, call_id: int, ok: bool, payload: bytes) -> None:
        """An ``ActorAnswer`` arrived."""
        entry = self._pending.pop(call_id, None)
        if entry is not None:
            entry[0].set_result((ok, payload))

    def worker_left(self, address: str, reason: str) -> None:
        """Fail the calls ``address`` had not answered when it left."""
        gone = [i for i, (_, a) in self._pending.items() if a == address]
        for call_id in gone:
            cell, _ = self._pending.pop(call_id)
            cell.set_exception(
                RuntimeError(f"{LOST}: {address} left ({reason or 'it exited'})")
            )

    def fail_all(self, error: Exception) -> None:
        """The scheduler thread stopped: nobody will answer."""
        pending, self._pending = self._pending, {}
        for cell, _ in pending.values():
            cell.set_exception(error)


def actor_calls_of(runtime: SchedulerRuntime) -> ActorCalls:
    """The runtime's :class:`ActorCalls`, made on first use (scheduler thread)."""
    calls = getattr(runtime, "_actor_calls", None)
    if calls is None:
        calls = runtime._actor_calls = ActorCalls(runtime)  # type: ignore[attr-defined]
    return calls
