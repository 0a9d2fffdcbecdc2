"""Exceptions users and plugins see; the same names and arguments as dask's."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class KilledWorker(Exception):
    """A task was executing on ``allowed_failures + 1`` workers that all died.

    Same constructor and attributes as ``distributed.scheduler.KilledWorker``;
    localsched adds ``reason``: what it knows of the last death (exit code or
    signal, memory, the last lines the process printed).
    """

    def __init__(
        self,
        task: Hashable,
        last_worker: Any,
        allowed_failures: int,
        reason: str = "",
    ) -> None:
        super().__init__(task, last_worker, allowed_failures, reason)

    @property
    def task(self) -> Hashable:
        return self.args[0]

    @property
    def last_worker(self) -> Any:
        return self.args[1]

    @property
    def allowed_failures(self) -> int:
        return int(self.args[2])

    @property
    def reason(self) -> str:
        return str(self.args[3])

    def __str__(self) -> str:
        address = getattr(self.last_worker, "address", self.last_worker)
        text = (
            f"Attempted to run task {self.task!r} on {self.allowed_failures + 1} "
            "different workers, but all those workers died while running it. "
            f"The last worker that attempted to run the task was {address}."
        )
        if self.reason:
            text += f" {self.reason}"
        return text


class Reschedule(Exception):
    """Raise it in a task to have the scheduler place the task again.

    Same as ``distributed.Reschedule``: the task is not erred; the scheduler
    releases it and, since it is still wanted, runs it again (perhaps on
    another worker).
    """


class InvalidTransition(RuntimeError):
    """The core was asked for a transition its table does not allow."""

    def __init__(
        self, key: Hashable, start: str, finish: str, story: list[tuple[Any, ...]]
    ) -> None:
        self.key = key
        self.start = start
        self.finish = finish
        self.story = story
        super().__init__(key, start, finish, story)

    def __str__(self) -> str:
        lines = "\n".join(f"  {entry}" for entry in self.story)
        return (
            f"Impossible transition from {self.start} to {self.finish} "
            f"for {self.key!r}. Story:\n{lines}"
        )


class InvalidTaskState(AssertionError):
    """``validate()`` found a broken invariant; carries the task's story."""


class GraphError(ValueError):
    """A submitted graph is invalid (cycle, missing dependency, bad key)."""


class NoValidWorkerError(Exception):
    """No worker can run a task with these restrictions within the timeout."""

    def __init__(
        self,
        task: Hashable,
        host_restrictions: Any,
        worker_restrictions: Any,
        resource_restrictions: Any,
        timeout: float,
    ) -> None:
        super().__init__(
            task, host_restrictions, worker_restrictions, resource_restrictions, timeout
        )

    def __str__(self) -> str:
        task, hosts, workers, resources, timeout = self.args
        return (
            f"Attempted to run task {task!r} but timed out after {timeout} s "
            "waiting for a valid worker matching: "
            f"host_restrictions={hosts!r}, worker_restrictions={workers!r}, "
            f"resource_restrictions={resources!r}."
        )


class ClosedClientError(RuntimeError):
    """The client, or the cluster it is attached to, is closed.

    dask's ``distributed.client.ClosedClientError``, raised by ``submit``,
    ``map``, ``scatter`` and the other calls that would otherwise return futures
    nobody can resolve. A ``RuntimeError``, as localsched raised before it had
    this name.
    """


class SchedulerStoppedError(ClosedClientError):
    """The scheduler thread stopped on an unexpected exception (its ``__cause__``).

    Every future pending at that moment fails with it, and so does every later
    call that needs the scheduler. The cluster cannot run anything more:
    ``close()`` it (that still stops every worker and frees every segment) and
    start a new one.
    """
