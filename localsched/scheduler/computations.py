"""``Scheduler.computations``: dask's history of compute and persist calls.

dask's scheduler keeps a bounded deque of :class:`Computation` records. A graph
that arrives while the scheduler is idle (every task group done) starts a new
computation; one that arrives while work is in flight joins the last one. A
computation holds the task groups its graphs created, the time the first graph
was submitted, the client's source code around the calls (when the client's
``distributed.diagnostics.computations.nframes`` is above 0) and the
annotations around them; its ``states`` and ``stop`` are read from its groups.

The ``Scheduler`` facade keeps the deque: the core records which groups an
``UpdateGraph`` created (``SchedulerState.created_groups``) and the facade files
them. The start time is the event's (the client's clock), as the core reads none.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from localsched.scheduler.tasks import TaskGroup

__all__ = ["Computation", "Computations", "SourceCode"]


class SourceCode(NamedTuple):
    """One frame of the code that submitted a graph (dask's ``SourceCode``)."""

    #: Source of the frame's code object (a function, a module, a cell).
    code: str
    #: Line of the call within the file.
    lineno_frame: int
    #: Line of the call within ``code``.
    lineno_relative: int
    filename: str


class Computation:
    """The tasks of one compute or persist call, or of calls made while it ran.

    dask calls this deprecated in favour of spans; it is still the
    ``Scheduler.computations`` record its dashboard and tests read.
    """

    __slots__ = ("annotations", "code", "groups", "id", "start")

    def __init__(self, start: float) -> None:
        #: ``time.time()`` when the first graph of it was submitted.
        self.start = start
        #: The task groups its graphs created.
        self.groups: set[TaskGroup] = set()
        #: Distinct tuples of :class:`SourceCode`, sorted (dask's ``SortedSet``).
        self.code: list[tuple[SourceCode, ...]] = []
        self.id = uuid.uuid4()
        #: Annotations around the calls (``dask.annotate``), merged.
        self.annotations: dict[str, Any] = {}

    @property
    def stop(self) -> float:
        """When its last task finished so far; -1 without groups."""
        if self.groups:
            return max(tg.stop for tg in self.groups)
        return -1

    @property
    def states(self) -> dict[str, int]:
        """Task counts by state, summed over its groups."""
        out: dict[str, int] = {}
        for tg in self.groups:
            for state, count in tg.states.items():
                out[state] = out.get(state, 0) + count
        return out

    def add_code(self, code: tuple[SourceCode, ...]) -> None:
        if code and code not in self.code:
            self.code.append(code)
            self.code.sort()

    def __repr__(self) -> str:
        return (
            f"<Computation {self.id}: "
            + "Tasks: "
            + ", ".join(f"{k}: {v}" for (k, v) in sorted(self.states.items()) if v)
            + ">"
        )


class Computations(deque[Computation]):
    """The scheduler's last computations, oldest first (dask's deque)."""

    def for_graph(
        self,
        task_groups: dict[str, TaskGroup],
        start: float,
        code: tuple[SourceCode, ...],
        annotations: Mapping[str, Any] | None,
    ) -> Computation:
        """The computation a graph submitted at ``start`` belongs to.

        As dask's ``update_graph``: the last one while any task group is not
        done, else a new one.
        """
        computation: Computation | None = None
        # Newest groups first: while work is in flight, one of them is
        # usually not done, and the scan stops there.
        if self and not all(tg.done for tg in reversed(task_groups.values())):
            computation = self[-1]
        if computation is None:
            computation = Computation(start)
            self.append(computation)
        computation.add_code(code)
        if annotations:
            computation.annotations.update(annotations)
        return computation
