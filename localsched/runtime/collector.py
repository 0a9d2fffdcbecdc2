"""The cyclic garbage collector is paused while the core takes in a big graph.

Taking in a map of a million tasks makes several tracked objects per task
(task states, their groups' sets, recommendations), none of them garbage, and
each generation's threshold sets off a collection that walks them all again:
the old generation is collected each time it grows by a quarter, so a few
times per big graph, each walk longer than the last. The client pauses the
collector likewise while it builds such a map (``client.graph.collector_paused``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from localsched.gc_pause import collector_paused_if
from localsched.scheduler import events as ev

__all__ = ["PAUSE_FROM", "paused_for_graphs"]

#: Tasks in one turn's graphs from which the collector is paused (a graph of
#: 50,000 takes the core about a second; smaller ones gain little).
PAUSE_FROM = 50_000


def paused_for_graphs(graphs: Sequence[ev.UpdateGraph]) -> AbstractContextManager[None]:
    """Pause the collector while the block runs if ``graphs`` hold at least
    :data:`PAUSE_FROM` tasks; it resumes (if it was on) however the block ends.

    Nothing the core does while taking in a graph makes reference cycles; a
    client thread that makes some meanwhile has them collected after.
    """
    return collector_paused_if(sum(len(graph.tasks) for graph in graphs) >= PAUSE_FROM)
