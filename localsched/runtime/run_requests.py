"""``Client.run``: a function run on workers outside task scheduling.

The ``RunOnWorkers`` request (``localsched.runtime.request_handler``) starts a run
here; each worker's ``FunctionResult`` resolves its part. A component of
:class:`~localsched.runtime.scheduler_thread.SchedulerRuntime` (``runtime.runs``)
owning its own fields; everything here runs on the scheduler thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

from localsched.aio import new_cell
from localsched.transport.protocol import Inspect, Message, RunFunction

if TYPE_CHECKING:
    from localsched.runtime.handles import WorkerHandle

__all__ = ["PendingRun", "Runs"]


class Runs:
    """The ``Client.run`` calls under way, and their workers' answers."""

    def __init__(self, workers: Mapping[str, WorkerHandle]) -> None:
        self.workers = workers
        #: run id -> the run still waiting for some of its workers
        self.pending: dict[int, PendingRun] = {}
        self.ids = itertools.count()

    def start(
        self, function: bytes, args: bytes, addresses: list[str]
    ) -> CellFuture[dict[str, tuple[bool, Any, str]]]:
        """Send ``Client.run``'s function to these workers (scheduler thread only).

        The future resolves once each ready one answered or left, to address ->
        (ok, pickled result or exception, traceback text); a worker that left
        answers with an ``OSError`` object instead of bytes.
        """

        def message(run_id: int, handle: WorkerHandle) -> Message:
            return RunFunction(
                id=run_id,
                function=function,
                args=args,
                address=handle.address,
                name=handle.name,
            )

        return self._ask(addresses, message)

    def start_inspect(
        self, questions: dict[str, tuple[str, dict[str, Any]]]
    ) -> CellFuture[dict[str, tuple[bool, Any, str]]]:
        """Ask workers about themselves: address -> (what, args) of an
        ``Inspect`` message (``worker/diagnostics.py``). Resolves as
        :meth:`start`, with the answers' pickles."""

        def message(run_id: int, handle: WorkerHandle) -> Message:
            what, args = questions[handle.address]
            return Inspect(id=run_id, what=what, args=args)

        return self._ask(list(questions), message)

    def _ask(
        self,
        addresses: list[str],
        message: Callable[[int, WorkerHandle], Message],
    ) -> CellFuture[dict[str, tuple[bool, Any, str]]]:
        """Send each ready worker of ``addresses`` its message of a new run;
        the cell resolves once each answered or left ({} if none is ready)."""
        cell: CellFuture[dict[str, tuple[bool, Any, str]]] = new_cell()
        handles = [self.workers.get(a) for a in addresses]
        ready = [h for h in handles if h is not None and h.is_ready]
        if not ready:
            cell.set_result({})
            return cell
        run_id = next(self.ids)
        self.pending[run_id] = PendingRun(cell, {h.address for h in ready})
        for handle in ready:
            handle.outbox.append(message(run_id, handle))
        return cell

    def answered(
        self, run_id: int, address: str, answer: tuple[bool, Any, str]
    ) -> None:
        """A worker's answer to run ``run_id``."""
        run = self.pending.get(run_id)
        if run is None or address not in run.waiting:
            return
        run.waiting.discard(address)
        run.answers[address] = answer
        if not run.waiting:
            del self.pending[run_id]
            run.cell.set_result(run.answers)

    def fail_all(self) -> None:
        """The scheduler thread stops: every run still waiting fails."""
        runs, self.pending = self.pending, {}
        for run in runs.values():
            run.cell.set_exception(
                RuntimeError("The scheduler thread stopped: cluster closed")
            )


class PendingRun:
    """A ``Client.run`` call: its result cell and the workers yet to answer."""

    __slots__ = ("answers", "cell", "waiting")

    def __init__(self, cell: CellFuture[Any], waiting: set[str]) -> None:
        self.cell = cell
        self.waiting = waiting
        self.answers: dict[str, tuple[bool, Any, str]] = {}
