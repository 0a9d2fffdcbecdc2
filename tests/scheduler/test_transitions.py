"""One or a few tests per edge of ``TRANSITIONS_TABLE``, and the engine around it.

Edges are reached through events wherever an event reaches them; the few that
only plugins reach (``SchedulerState.transition``) are driven that way.
"""

from __future__ import annotations

import pytest

from localsched.errors import InvalidTransition
from localsched.scheduler import events as ev
from localsched.scheduler.commands import (
    ComputeTask,
    FreeKeys,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    KeyLost,
    KeyRetried,
)
from localsched.scheduler.state import SchedulerState
from localsched.scheduler.transitions import TRANSITIONS_TABLE
from tests.scheduler.factories import (
    add_worker,
    computed,
    err,
    finish,
    of_type,
    release,
    remove_worker,
    scatter,
    spec,
    states,
    submit,
    tick,
)


def edges(state: SchedulerState, key: object) -> list[tuple[str, str]]:
    """(start, finish) of every logged transition of ``key``, oldest first."""
    return [(t.start, t.finish) for t in state.story(key) if t.key == key]


def test_table_has_exactly_dasks_edges_except_actor_only_memory_erred():
    # dask's table also has (memory, erred), used only for actors, which
    # localsched does not support.
    assert set(TRANSITIONS_TABLE) == {
        ("released", "waiting"),
        ("waiting", "released"),
        ("waiting", "processing"),
        ("waiting", "no-worker"),
        ("waiting", "queued"),
        ("waiting", "memory"),
        ("queued", "released"),
        ("queued", "processing"),
        ("queued", "erred"),
        ("processing", "released"),
        ("processing", "memory"),
        ("processing", "erred"),
        ("no-worker", "released"),
        ("no-worker", "processing"),
        ("no-worker", "erred"),
        ("released", "forgotten"),
        ("memory", "forgotten"),
        ("erred", "released"),
        ("memory", "released"),
        ("released", "erred"),
    }


# -- released -> waiting ---------------------------------------------------------------


def test_released_waiting_records_missing_dependencies_and_pulls_them_in(state):
    submit(state, {"b": ["a"]}, keys=["b"])

    a, b = state.tasks["a"], state.tasks["b"]
    assert ("released", "waiting") in edges(state, "a")
    assert ("released", "waiting") in edges(state, "b")
    assert b.state == "waiting"
    assert b.waiting_on == {a}
    assert a.waiters == {b}


def test_released_waiting_without_missing_dependencies_goes_on_to_processing(state):
    add_worker(state, "w1")
    scatter(state, {"a": "w1"})

    cmds = submit(state, {"b": ["a"]}, keys=["b"])

    assert edges(state, "b") == [("released", "waiting"), ("waiting", "processing")]
    assert cmds == [ComputeTask.match(key="b", worker="w1", dependencies=("a",))]
    assert state.tasks["b"].waiting_on == set()
    assert state.tasks["a"].waiters == {state.tasks["b"]}


def test_released_waiting_with_an_erred_dependency_errs_without_running(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    err(state, "a", exception=ZeroDivisionError("boom"))

    cmds = submit(state, {"b": ["a"]}, keys=["b"])

    b = state.tasks["b"]
    assert b.state == "erred"
    assert b.exception_blame is state.tasks["a"]
    assert ("released", "erred") in edges(state, "b")
    assert not computed(cmds)
    (msg,) = of_type(cmds, KeyErred)
    assert msg.key == "b"
    assert isinstance(msg.exception, ZeroDivisionError)


# -- waiting -> processing / no-worker / queued ----------------------------------------


def test_waiting_processing_sends_compute_task_with_everything_the_worker_needs(
    state,
):
    add_worker(state, "w1", resources={"GPU": 2})
    scatter(state, {"a": "w1"})

    cmds = submit(
        state,
        {"b": ["a"]},
        keys=["b"],
        resources={"b": {"GPU": 1}},
        annotations={"b": {"custom": 1}},
    )

    b = state.tasks["b"]
    assert cmds == [
        ComputeTask(
            stimulus_id=state.story("b")[-1].stimulus_id,
            worker="w1",
            key="b",
            run_spec=spec("b"),
            priority=b.priority,
            dependencies=("a",),
            resource_restrictions={"GPU": 1},
            annotations={"custom": 1},
            run_id=b.run_id,
        )
    ]
    ws = state.workers["w1"]
    assert b.processing_on is ws
    assert b in ws.processing
    assert ws.used_resources == {"GPU": 1}
    assert state.n_tasks == 1


def test_each_dispatch_gets_a_new_run_id(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    first = state.tasks["a"].run_id

    state.handle(ev.RescheduleRequested(stimulus_id="resched", key="a"))

    assert state.tasks["a"].state == "processing"
    assert state.tasks["a"].run_id > first


def test_waiting_no_worker_when_no_valid_worker_exists(state):
    add_worker(state, "w1")

    cmds = submit(state, ["a"], restrictions={"a": ["w9"]})

    ts = state.tasks["a"]
    assert edges(state, "a")[-1] == ("waiting", "no-worker")
    assert ts in state.unrunnable
    assert not cmds


def test_waiting_queued_when_rootish_and_no_slot(state):
    add_worker(state, "w1", nthreads=1)
    keys = [("x", i) for i in range(4)]

    cmds = submit(state, keys)

    # ceil(1.1 * 1) = 2 slots
    assert len(computed(cmds)) == 2
    queued = [k for k in keys if state.tasks[k].state == "queued"]
    assert len(queued) == 2
    assert all(("waiting", "queued") in edges(state, k) for k in queued)
    assert {ts.key for ts in state.queued} == set(queued)


def test_waiting_memory_is_a_benign_no_op(state):
    # Only reachable from plugins / a stale result racing a recompute.
    submit(state, {"b": ["a"]}, keys=["b"])
    b = state.tasks["b"]

    recs = state.transition("b", "memory", stimulus_id="late", worker="w1")

    assert recs == {}
    assert b.state == "waiting"
    assert b.waiting_on == {state.tasks["a"]}
    assert not b.who_has


# -- queued ----------------------------------------------------------------------------


def test_queued_processing_when_a_slot_opens(state):
    add_worker(state, "w1", nthreads=1)
    keys = [("x", i) for i in range(4)]
    submit(state, keys)
    running = [k for k in keys if state.tasks[k].state == "processing"]
    best_queued = state.queued.peek().key

    cmds = finish(state, running[0])

    assert computed(cmds) == {best_queued: "w1"}
    assert ("queued", "processing") in edges(state, best_queued)
    assert state.tasks[best_queued] not in state.queued


def test_queued_released_when_the_client_releases_it(state):
    add_worker(state, "w1", nthreads=1)
    keys = [("x", i) for i in range(4)]
    submit(state, keys)
    queued_key = state.queued.peek().key

    cmds = release(state, [queued_key])

    assert edges(state, queued_key)[-2:] == [
        ("queued", "released"),
        ("released", "forgotten"),
    ]
    assert queued_key not in state.tasks
    assert len(state.queued) == 1
    assert not of_type(cmds, FreeKeys)  # never sent to a worker


def test_queued_erred_from_a_plugin_leaves_the_queue(state):
    add_worker(state, "w1", nthreads=1)
    keys = [("x", i) for i in range(4)]
    submit(state, keys)
    ts = state.queued.peek()
    error = RuntimeError("plugin says no")

    recs = state.transition(
        ts.key, "erred", stimulus_id="plugin", cause=ts.key, exception=error
    )

    assert recs == {}
    assert ts.state == "erred"
    assert ts not in state.queued
    assert ts.exception is error
    assert ts.exception_blame is ts


# -- processing ------------------------------------------------------------------------


def test_processing_memory_records_result_and_tells_wanting_client(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    ws = state.workers["w1"]

    cmds = finish(state, "a", nbytes=123, type="int", duration=2.0)

    ts = state.tasks["a"]
    assert ts.state == "memory"
    assert ts.who_has == {ws}
    assert ws.has_what == {ts: None}
    assert ws.nbytes == 123
    assert ts.nbytes == 123
    assert ts.type == "int"
    assert ts.processing_on is None
    assert ws.processing == {}
    assert cmds == [KeyInMemory.match(client="c", key="a", type="int")]
    assert ts.prefix.duration_average == 2.0
    assert ts.group.types == {"int"}


def test_processing_memory_from_a_worker_not_running_it_is_refused(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})

    recs = state.transition(
        "a", "memory", stimulus_id="bogus", worker="w2", nbytes=1, startstops=()
    )

    # dask releases a task whose result comes from a worker it did not trust.
    assert recs == {"a": "released"}
    assert state.tasks["a"].state == "processing"


def test_processing_memory_recommends_dependents_and_releases_unneeded_deps(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"], "c": ["b"]}, keys=["c"])

    finish(state, "a")
    assert states(state, "a", "b", "c") == {
        "a": "memory",
        "b": "processing",
        "c": "waiting",
    }
    cmds = finish(state, "b")

    # b's only waiter was c; a's only waiter was b and nobody wants a
    assert states(state, "a", "b", "c") == {
        "a": "released",
        "b": "memory",
        "c": "processing",
    }
    assert FreeKeys.match(worker="w1", keys=("a",)) in cmds
    assert not state.tasks["a"].who_has


def test_processing_memory_of_unwanted_task_releases_it_at_once(state):
    # e.g. the client released the key while it ran, but a dependent kept it.
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])
    finish(state, "a")
    finish(state, "b")
    assert states(state, "a") == {"a": "released"}


def test_processing_erred_stores_exception_and_reports_it(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    error = ValueError("bad")

    cmds = err(state, "a", exception=error)

    ts = state.tasks["a"]
    assert ts.state == "erred"
    assert ts.exception is error
    assert ts.exception_blame is ts
    assert ts.erred_on == {"w1"}
    assert ts.traceback == "tb-a"
    assert cmds == [
        KeyErred.match(
            client="c", key="a", exception=error, exception_text="bad", traceback="tb-a"
        )
    ]
    assert state.erred_tasks[0][0] == "a"
    assert state.workers["w1"].processing == {}


def test_processing_released_frees_the_key_on_the_worker(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    first_run = state.tasks["a"].run_id

    cmds = state.handle(ev.RescheduleRequested(stimulus_id="resched", key="a"))

    assert edges(state, "a")[-3:] == [
        ("processing", "released"),
        ("released", "waiting"),
        ("waiting", "processing"),
    ]
    assert cmds[0] == FreeKeys.match(worker="w1", keys=("a",))
    assert cmds[1] == ComputeTask.match(key="a", worker="w1")
    assert state.tasks["a"].run_id != first_run


# -- no-worker -------------------------------------------------------------------------


def test_no_worker_processing_when_a_valid_worker_arrives(state):
    add_worker(state, "w1")
    submit(state, ["a"], restrictions={"a": ["w2"]})

    cmds = add_worker(state, "w2")

    assert computed(cmds) == {"a": "w2"}
    assert ("no-worker", "processing") in edges(state, "a")
    assert not state.unrunnable


def test_no_worker_processing_is_a_no_op_while_no_worker_fits(state):
    add_worker(state, "w1")
    submit(state, ["a"], restrictions={"a": ["w2"]})

    recs = state.transition("a", "processing", stimulus_id="retry")

    assert recs == {}
    assert state.tasks["a"].state == "no-worker"
    assert state.tasks["a"] in state.unrunnable


def test_no_worker_dependency_nobody_needs_is_released_then_forgotten(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"], restrictions={"a": ["w9"]})
    assert states(state, "a", "b") == {"a": "no-worker", "b": "waiting"}

    release(state, ["b"])

    assert edges(state, "a")[-2:] == [
        ("no-worker", "released"),
        ("released", "forgotten"),
    ]
    assert not state.tasks
    assert not state.unrunnable


def test_no_worker_erred_after_no_workers_timeout(state):
    state.no_workers_timeout = 10.0
    add_worker(state, "w1")
    submit(state, ["a"], restrictions={"a": ["w9"]}, time=1.0)

    assert not of_type(tick(state, 5.0), KeyErred)
    cmds = tick(state, 12.0)

    assert ("no-worker", "erred") in edges(state, "a")
    (msg,) = of_type(cmds, KeyErred)
    assert msg.key == "a"
    assert not state.unrunnable


# -- memory ----------------------------------------------------------------------------


def test_memory_released_when_the_only_holder_dies_and_is_recomputed(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a")
    add_worker(state, "w2")

    cmds = remove_worker(state, "w1")

    assert edges(state, "a")[-3:] == [
        ("memory", "released"),
        ("released", "waiting"),
        ("waiting", "processing"),
    ]
    assert KeyLost.match(client="c", key="a") in cmds
    assert ComputeTask.match(key="a", worker="w2") in cmds


def test_memory_released_sends_dependents_back_to_waiting(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    finish(state, "a")
    submit(state, {"b": ["a"]}, keys=["b"], restrictions={"b": ["w2"]})
    assert state.tasks["b"].processing_on is state.workers["w2"]

    # w2 learns that the only copy of a is gone; b cannot run.
    cmds = state.handle(ev.MissingData(stimulus_id="missing", key="a", worker="w1"))

    a, b = state.tasks["a"], state.tasks["b"]
    assert ("memory", "released") in edges(state, "a")
    assert a.state == "processing"  # recomputed on its restricted worker
    assert b.state == "waiting"
    assert b.waiting_on == {a}
    assert FreeKeys.match(worker="w2", keys=("b",)) in cmds


def test_memory_forgotten_when_the_client_releases_the_key(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a")

    cmds = release(state, ["a"])

    assert edges(state, "a")[-1] == ("memory", "forgotten")
    assert "a" not in state.tasks
    assert cmds == [FreeKeys.match(worker="w1", keys=("a",))]
    assert state.workers["w1"].has_what == {}
    assert state.workers["w1"].nbytes == 0


def test_scattered_data_lost_with_its_worker_is_forgotten(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w1"})

    cmds = remove_worker(state, "w1")

    assert "d" not in state.tasks
    assert KeyCancelled.match(client="c", key="d") in cmds


# -- erred -----------------------------------------------------------------------------


def test_erred_released_clears_the_error_and_retries(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    err(state, "a")

    cmds = state.handle(ev.RetryRequested(stimulus_id="retry", client="c", keys=["a"]))

    ts = state.tasks["a"]
    assert ("erred", "released") in edges(state, "a")
    assert ts.state == "processing"
    assert ts.exception is None
    assert ts.exception_blame is None
    assert not ts.erred_on
    assert FreeKeys.match(worker="w1", keys=("a",)) in cmds
    assert KeyRetried.match(client="c", key="a") in cmds
    assert ComputeTask.match(key="a") in cmds


def test_released_erred_blames_dependents_without_data(state):
    # b's inputs cannot fit the worker: waiting -> released -> erred, and its
    # waiting dependent c is blamed on b.
    add_worker(state, "w1", memory_limit=1000)
    scatter(state, {"d": "w1"}, nbytes={"d": 5000})

    cmds = submit(state, {"b": ["d"], "c": ["b"]}, keys=["c"])

    b, c = state.tasks["b"], state.tasks["c"]
    assert edges(state, "b")[-2:] == [("waiting", "released"), ("released", "erred")]
    assert c.state == "erred"
    assert c.exception_blame is b
    (msg,) = of_type(cmds, KeyErred)
    assert msg.key == "c"
    assert isinstance(msg.exception, MemoryError)


# -- the engine ------------------------------------------------------------------------


def test_missing_edge_is_composed_through_released(state):
    # processing -> waiting has no edge: retries go processing -> released -> waiting
    add_worker(state, "w1")
    submit(state, ["a"], retries=1)

    err(state, "a")

    assert edges(state, "a")[-3:] == [
        ("processing", "released"),
        ("released", "waiting"),
        ("waiting", "processing"),
    ]
    assert state.tasks["a"].retries == 0


def test_composed_transition_to_forgotten_of_erred_task(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    err(state, "a")

    release(state, ["a"])

    assert edges(state, "a")[-2:] == [("erred", "released"), ("released", "forgotten")]
    assert "a" not in state.tasks


def test_composed_transition_follows_the_first_steps_recommendation(state):
    # A wanted processing task asked to be forgotten comes back to waiting:
    # released recommends waiting, which wins over the requested finish (dask).
    add_worker(state, "w1")
    submit(state, ["a"])

    recs = state.transition("a", "forgotten", stimulus_id="plugin")

    assert state.tasks["a"].state == "waiting"
    assert recs == {"a": "processing"}


def test_invalid_transition_raises_with_the_story(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])
    finish(state, "a")
    finish(state, "b")
    assert state.tasks["a"].state == "released"

    with pytest.raises(InvalidTransition) as info:
        state.transition("a", "processing", stimulus_id="bad")

    exc = info.value
    assert (exc.key, exc.start, exc.finish) == ("a", "released", "processing")
    assert exc.story == state.story("a")
    assert [t[1:3] for t in exc.story if t[0] == "a"] == [
        ("released", "waiting"),
        ("waiting", "processing"),
        ("processing", "memory"),
        ("memory", "released"),
    ]
    assert "Impossible transition from released to processing" in str(exc)


def test_transition_of_unknown_key_or_to_same_state_does_nothing(state):
    submit(state, {"b": ["a"]}, keys=["b"])
    n = len(state.transition_log)

    assert state.transition("nope", "waiting", stimulus_id="x") == {}
    assert state.transition("b", "waiting", stimulus_id="x") == {}
    assert len(state.transition_log) == n


def test_transition_counter_max_stops_runaway_recommendations():
    s = SchedulerState(transition_counter_max=3)
    add_worker(s, "w1")
    with pytest.raises(RuntimeError, match="transition_counter_max"):
        submit(s, {"c": ["b"], "b": ["a"]}, keys=["c"])


# -- group and prefix counters ---------------------------------------------------------


def test_group_and_prefix_count_tasks_per_state(state):
    add_worker(state, "w1", nthreads=4)
    keys = [("inc-1", i) for i in range(3)] + [("inc-2", 0)]
    submit(state, keys)

    tg1 = state.task_groups["inc-1"]
    tg2 = state.task_groups["inc-2"]
    tp = state.task_prefixes["inc"]
    assert tg1.prefix is tp
    assert tg2.prefix is tp
    assert tg1.states["processing"] == 3
    assert tp.states["processing"] == 4

    finish(state, ("inc-1", 0))
    err(state, ("inc-1", 1))

    assert tg1.states["processing"] == 1
    assert tg1.states["memory"] == 1
    assert tg1.states["erred"] == 1
    assert tp.states["processing"] == 2
    assert tp.states["memory"] == 1
    assert tp.states["erred"] == 1
    assert sum(tg1.states.values()) == len(tg1) == 3
    assert not tg1.done
    finish(state, ("inc-1", 2))
    assert tg1.done


def test_counters_follow_composed_transitions(state):
    add_worker(state, "w1")
    submit(state, [("x", 0)], retries=1)
    tg = state.task_groups["x"]

    err(state, ("x", 0))

    assert tg.states["processing"] == 1
    assert tg.states["released"] == 0
    assert tg.states["erred"] == 0
    assert tg.prefix.states == tg.states


def test_fully_forgotten_group_is_removed_and_subtracted_from_prefix(state):
    add_worker(state, "w1", nthreads=4)
    submit(state, [("x-1", 0), ("x-1", 1), ("x-2", 0)])
    tp = state.task_prefixes["x"]
    tg1 = state.task_groups["x-1"]

    release(state, [("x-1", 0)])
    assert "x-1" in state.task_groups  # one task left
    release(state, [("x-1", 1)])

    assert "x-1" not in state.task_groups
    assert tg1 not in tp.groups
    assert tp.states["processing"] == 1
    assert tp.states["forgotten"] == 0
    assert "x" in state.task_prefixes  # prefixes keep their estimates


def test_group_dependencies_track_the_groups_depended_on(state):
    submit(state, {("y", 0): [("x", 0)], ("y", 1): [("x", 1)]}, keys=[("y", 0)])
    assert state.task_groups["y"].dependencies == {state.task_groups["x"]}


# -- forgetting and releasing ----------------------------------------------------------


def test_releasing_the_final_key_forgets_the_whole_graph(state):
    add_worker(state, "w1")
    submit(state, {"c": ["b"], "b": ["a"]}, keys=["c"])
    finish(state, "a")
    finish(state, "b")
    finish(state, "c")
    assert states(state, "a", "b", "c") == {
        "a": "released",
        "b": "released",
        "c": "memory",
    }

    release(state, ["c"])

    assert state.tasks == {}
    assert state.task_groups == {}
    for tp in state.task_prefixes.values():
        assert not any(tp.states.values())


def test_releasing_a_waiting_graph_cancels_the_running_dependency(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])

    cmds = release(state, ["b"])

    assert state.tasks == {}
    assert cmds == [FreeKeys.match(worker="w1", keys=("a",))]
    assert state.workers["w1"].processing == {}


def test_dependency_still_wanted_by_a_client_survives_its_dependent(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["a", "b"])
    finish(state, "a")
    finish(state, "b")

    release(state, ["b"])

    assert states(state, "a", "b") == {"a": "memory", "b": "forgotten"}
    assert state.tasks["a"].dependents == set()


def test_dependency_shared_by_two_dependents_is_released_after_both(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, {"b": ["a"], "c": ["a"]}, keys=["b", "c"])
    finish(state, "a")
    finish(state, "b")
    assert states(state, "a") == {"a": "memory"}

    finish(state, "c")

    assert states(state, "a") == {"a": "released"}


def test_released_scattered_data_is_forgotten_and_orphans_its_dependents(state):
    add_worker(state, "w1")
    scatter(state, {"d": "w1"})
    submit(state, {"b": ["d"]}, keys=["b"])
    finish(state, "b")

    cmds = release(state, ["d"])

    # Pure data cannot be recomputed, so released data is forgotten (dask).
    assert edges(state, "d")[-2:] == [("memory", "released"), ("released", "forgotten")]
    assert "d" not in state.tasks
    b = state.tasks["b"]
    assert b.state == "memory"
    assert b.has_lost_dependencies
    assert b.dependencies == set()
    assert FreeKeys.match(worker="w1", keys=("d",)) in cmds


def test_lost_result_whose_dependency_was_forgotten_is_forgotten(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w1"})
    submit(state, {"b": ["d"]}, keys=["b"], restrictions={"b": ["w2"]})
    finish(state, "b")
    remove_worker(state, "w1")  # d forgotten; b in memory on w2 keeps its data
    b = state.tasks["b"]
    assert b.state == "memory"
    assert b.has_lost_dependencies

    cmds = remove_worker(state, "w2")

    assert "b" not in state.tasks
    assert KeyCancelled.match(client="c", key="b") in cmds


# -- errors propagate ------------------------------------------------------------------


def test_error_propagates_to_every_dependent_with_blame(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"], "c": ["b"], "d": ["a"]}, keys=["c", "d"])
    error = KeyError("k")

    cmds = err(state, "a", exception=error)

    a = state.tasks["a"]
    for key in "abcd":
        ts = state.tasks[key]
        assert ts.state == "erred", key
        assert ts.exception_blame is a, key
    # only a carries the exception itself
    assert state.tasks["c"].exception is None
    erred = {m.key: m for m in of_type(cmds, KeyErred)}
    assert set(erred) == {"c", "d"}
    assert all(m.exception is error for m in erred.values())
    assert all(m.traceback == "tb-a" for m in erred.values())


def test_erred_dependent_releases_dependencies_nobody_needs(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, {"c": ["a", "b"]}, keys=["c"])
    finish(state, "a")

    cmds = err(state, "b")

    assert states(state, "a", "b", "c") == {
        "a": "released",
        "b": "erred",
        "c": "erred",
    }
    assert FreeKeys.match(worker="w1", keys=("a",)) in cmds


def test_retry_of_dependent_retries_the_erred_root(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])
    err(state, "a")

    cmds = state.handle(ev.RetryRequested(stimulus_id="retry", client="c", keys=["b"]))

    assert states(state, "a", "b") == {"a": "processing", "b": "waiting"}
    assert state.tasks["b"].exception_blame is None
    assert computed(cmds) == {"a": "w1"}


# -- lost data is recomputed -----------------------------------------------------------


def test_lost_dependency_is_recomputed_before_its_dependent(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(
        state,
        {"b": ["a"]},
        keys=["b"],
        restrictions={"a": ["w1"]},
        loose_restrictions=["a"],
    )
    finish(state, "a")
    assert state.tasks["b"].processing_on is state.workers["w1"]

    cmds = remove_worker(state, "w1")

    assert states(state, "a", "b") == {"a": "processing", "b": "waiting"}
    assert computed(cmds) == {"a": "w2"}
    assert state.tasks["b"].waiting_on == {state.tasks["a"]}
    finish(state, "a")
    assert states(state, "b") == {"b": "processing"}


# -- the log, stories, stimulus ids ----------------------------------------------------


def test_transition_log_records_every_transition_with_its_stimulus(state):
    add_worker(state, "w1")
    submit(state, ["a"], stimulus_id="graph-1")
    finish(state, "a", stimulus_id="done-1")

    # (key, start, finish, recommendations, stimulus_id, time), as dask's log
    log = [(t[0], t[1], t[2], t[4]) for t in state.transition_log]
    assert log == [
        ("a", "released", "waiting", "graph-1"),
        ("a", "waiting", "processing", "graph-1"),
        ("a", "processing", "memory", "done-1"),
    ]
    assert state.transition_log[0][3] == {"a": "processing"}


def test_story_filters_by_key_and_by_stimulus_id(state):
    add_worker(state, "w1")
    submit(state, ["a"], stimulus_id="graph-a")
    submit(state, ["b"], stimulus_id="graph-b")

    assert {t.key for t in state.story("graph-b")} == {"b"}
    assert {t.stimulus_id for t in state.story("a")} == {"graph-a"}
    assert len(state.story("a", "b")) == len(state.story("a")) + len(state.story("b"))


def test_story_includes_transitions_that_recommended_the_key(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])
    finish(state, "a")

    entries = state.story("b")

    # a's processing->memory recommended b -> processing
    assert ("a", "processing", "memory") in [tuple(t)[:3] for t in entries]


def test_transition_log_is_bounded():
    s = SchedulerState(transition_log_length=3)
    add_worker(s, "w1")
    submit(s, ["a", "b"])
    assert len(s.transition_log) == 3


def test_commands_echo_the_stimulus_id(state):
    add_worker(state, "w1")
    cmds = submit(state, ["a"], stimulus_id="graph-x")
    cmds += finish(state, "a", stimulus_id="fin-x")
    assert [c.stimulus_id for c in cmds] == ["graph-x", "fin-x"]


# -- hooks -----------------------------------------------------------------------------


def test_hooks_see_every_transition_in_order_with_kwargs(state, hooks):
    add_worker(state, "w1")
    submit(state, ["a"], stimulus_id="g")
    finish(state, "a", stimulus_id="f", nbytes=7)

    assert [t[:4] for t in hooks.transitions] == [
        ("a", "released", "waiting", "g"),
        ("a", "waiting", "processing", "g"),
        ("a", "processing", "memory", "f"),
    ]
    assert hooks.transitions[2][4]["nbytes"] == 7
    assert hooks.transitions[2][4]["worker"] == "w1"
    assert [t[:4] for t in hooks.transitions] == [
        (t[0], t[1], t[2], t[4]) for t in state.transition_log
    ]


def test_hooks_see_composed_transitions_as_two_steps(state, hooks):
    add_worker(state, "w1")
    submit(state, ["a"])
    err(state, "a")
    hooks.transitions.clear()

    release(state, ["a"], stimulus_id="rel")

    assert [t[:4] for t in hooks.transitions] == [
        ("a", "erred", "released", "rel"),
        ("a", "released", "forgotten", "rel"),
    ]


def test_forgotten_task_is_still_readable_during_its_hook(state, hooks):
    seen_dependencies = {}

    def on_transition(key, start, finish, stimulus_id, kwargs):
        hooks.transition(key, start, finish, stimulus_id, kwargs)
        if finish == "forgotten":
            seen_dependencies[key] = {d.key for d in state.tasks[key].dependencies}

    state.transition_hook = on_transition
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])
    finish(state, "a")
    finish(state, "b")

    release(state, ["b"])

    assert hooks.visible_during_hook == {"a": True, "b": True}
    assert seen_dependencies == {"b": {"a"}, "a": set()}
    assert state.tasks == {}


def test_hooks_are_notified_of_workers_clients_and_graphs(state, hooks):
    add_worker(state, "w1")
    submit(state, ["a"], client="c1")
    remove_worker(state, "w1", expected=True)

    names = [name for name, _ in hooks.notifications]
    assert names == ["add_worker", "add_client", "update_graph", "remove_worker"]
    update = hooks.notifications[2][1]
    assert update["client"] == "c1"
    assert update["keys"] == {"a"}
    assert update["tasks"] == ["a"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "user_priority": {"inc-3": 5},
            "priority": {f"inc-{i}": 20 - i for i in range(20)},
        },
        {"retries": 1, "restrictions": {"inc-1": ["w2"]}},
    ],
    ids=["plain", "priorities", "options"],
)
def test_a_maps_fast_submission_equals_the_general_path(options):
    # Without a hook, a graph without edges skips run_transitions' dict
    # (engine.submit_lone_tasks); a hook forces the general path.
    def run(observed: bool) -> tuple[list[object], list[object], int]:
        state = SchedulerState(validate=True, transition_log_length=1000)
        if observed:
            state.transition_hook = lambda *args: None
        add_worker(state, "w1", stimulus_id="add-1")
        add_worker(state, "w2", nthreads=2, stimulus_id="add-2")
        submit(state, ["old"], stimulus_id="first")
        commands = submit(
            state,
            [f"inc-{i}" for i in range(20)],
            stimulus_id="map",
            time=5.0,
            **options,
        )
        # Known tasks among the keys: the general path.
        commands += submit(state, ["inc-0", "inc-21"], stimulus_id="again", time=5.0)
        queued = len(state.queued)
        for key in list(computed(commands)):
            commands += finish(state, key, stimulus_id=f"{key}-done")
        # Lone tasks in memory, processing and queued: the lone release.
        commands += release(
            state, ["inc-1", "inc-2", "inc-3", "inc-4", "inc-1"], stimulus_id="some"
        )
        commands += release(state, [f"inc-{i}" for i in range(22)], stimulus_id="all")
        assert list(state.tasks) == ["old"]
        return list(state.transition_log.entries()), commands, queued

    log, commands, queued = run(observed=False)
    assert (log, commands, queued) == run(observed=True)
    first_moves = {entry[0]: entry[1:3] for entry in reversed(log)}
    assert all(
        first_moves[f"inc-{i}"] == ("released", "waiting") for i in (*range(20), 21)
    )
    # Root-ish tasks filled the three threads' slots, the others were queued.
    started = [c.key for c in commands if type(c) is ComputeTask]
    assert queued >= 10
    assert len(started) > 21 - queued
    # Every task sent to a worker was freed there (finished or cancelled).
    freed = [key for c in commands if type(c) is FreeKeys for key in c.keys]
    assert sorted(freed) == sorted(started)
