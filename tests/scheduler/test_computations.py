"""``Scheduler.computations``: dask's history of compute calls, on the facade."""

from __future__ import annotations

from localsched.scheduler import events as ev
from localsched.scheduler.computations import SourceCode
from localsched.scheduler.scheduler import Scheduler
from tests.scheduler.factories import add_worker, finish, graph_event, sid

CODE = (SourceCode("x = f()", 3, 0, "script.py"),)


def test_a_graph_submitted_while_idle_starts_a_computation() -> None:
    s = Scheduler(validate=True)
    add_worker(s.state, "w1")
    s.handle(graph_event(s.state, {"a-1": ()}, time=10.0, code=CODE))
    finish(s.state, "a-1")
    s.handle(graph_event(s.state, {"b-1": ()}, time=20.0))
    first, second = s.computations
    assert [tg.name for tg in first.groups] == ["a"]
    assert [tg.name for tg in second.groups] == ["b"]
    assert (first.start, second.start) == (10.0, 20.0)
    assert first.code == [CODE]
    assert not second.code
    assert first.states["memory"] == 1
    assert repr(first).endswith("Tasks: memory: 1>")


def test_graphs_submitted_while_work_is_in_flight_join_the_last_computation() -> None:
    s = Scheduler(validate=True)
    add_worker(s.state, "w1")
    s.handle(
        graph_event(s.state, {"a-1": ()}, time=1.0),
        graph_event(s.state, {"b-1": ["a-1"]}, time=2.0, code=CODE),
    )
    (computation,) = s.computations
    assert {tg.name for tg in computation.groups} == {"a", "b"}
    assert computation.code == [CODE]
    assert computation.start == 1.0
    assert computation.stop == 0.0  # nothing ran yet
    # A graph adding tasks to an existing group adds no group.
    s.handle(graph_event(s.state, {"a-2": ()}, time=3.0))
    assert len(s.computations) == 1
    assert len(computation.groups) == 2


def test_the_history_is_bounded_and_a_restart_clears_it() -> None:
    s = Scheduler(validate=True, computations_max_history=2)
    for i in range(3):
        s.handle(graph_event(s.state, {f"x{i}-1": ()}, time=float(i), client="c"))
        s.handle(
            ev.ClientReleasesKeys(
                stimulus_id=sid("release"), client="c", keys=[f"x{i}-1"]
            )
        )
    assert [c.start for c in s.computations] == [1.0, 2.0]
    s.restart()
    assert not s.computations
