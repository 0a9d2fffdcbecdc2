"""Each event of ``events.py``: what it changes and which commands it yields."""

from __future__ import annotations

import pytest

from localsched.errors import GraphError, KilledWorker, NoValidWorkerError
from localsched.scheduler import events as ev
from localsched.scheduler import stimuli
from localsched.scheduler.commands import (
    AcquireReplicas,
    CloseWorker,
    ComputeTask,
    FreeData,
    FreeKeys,
    GraphRejected,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    KeyLost,
    KeyRetried,
    RetirementFailed,
)
from tests.scheduler.factories import (
    add_worker,
    computed,
    err,
    finish,
    graph_event,
    of_type,
    release,
    remove_worker,
    scatter,
    spec,
    states,
    submit,
    tick,
)

# -- UpdateGraph: priorities -----------------------------------------------------------


def test_priority_is_minus_user_priority_generation_graph_order(state):
    submit(
        state,
        ["a", "b"],
        priority={"a": 7, "b": 3},
        user_priority=5,
        time=1.0,
    )
    assert state.tasks["a"].priority == (-5, 1, 7)
    assert state.tasks["b"].priority == (-5, 1, 3)


def test_per_key_user_priority_and_priority_annotation(state):
    submit(
        state,
        ["a", "b", "c"],
        priority={"a": 0, "b": 1, "c": 2},
        user_priority={"a": 2},
        annotations={"c": {"priority": 9}},
    )
    assert state.tasks["a"].priority[0] == -2
    assert state.tasks["b"].priority[0] == 0
    assert state.tasks["c"].priority[0] == -9


def test_graph_order_defaults_to_submission_order_dependencies_first(state):
    submit(state, {"c": ["b"], "b": ["a"]}, keys=["c"])
    order = sorted("abc", key=lambda k: state.tasks[k].priority)
    assert order == ["a", "b", "c"]


def test_queued_roots_with_higher_user_priority_run_first(state):
    add_worker(state, "w1", nthreads=1)
    submit(state, [("blocker", i) for i in range(3)], time=0.0)
    submit(state, [("low", i) for i in range(3)], user_priority=0, time=1.0)
    submit(state, [("high", i) for i in range(3)], user_priority=10, time=2.0)

    cmds = finish(state, ("blocker", 0))

    assert computed(cmds) == {("high", 0): "w1"}


def test_graphs_within_fifo_timeout_share_a_generation(state):
    submit(state, ["a"], time=10.0, fifo_timeout=0.1)
    submit(state, ["b"], time=10.05, fifo_timeout=0.1)
    submit(state, ["c"], time=11.0, fifo_timeout=0.1)

    gen = {k: state.tasks[k].priority[1] for k in "abc"}
    assert gen["a"] == gen["b"]
    assert gen["c"] == gen["a"] + 1


def test_older_generation_outranks_a_newer_graph_despite_graph_order(state):
    submit(state, ["old"], priority={"old": 100}, time=1.0)
    submit(state, ["new"], priority={"new": 0}, time=2.0)
    assert state.tasks["old"].priority < state.tasks["new"].priority


def test_subtasks_of_a_running_task_go_ahead_of_its_siblings(state):
    add_worker(state, "w1")
    submit(state, ["older"], time=1.0)
    submit(state, ["parent", "sibling"], time=2.0)

    submit(state, ["child"], submitting_task="parent", time=3.0)

    child = state.tasks["child"].priority
    assert child < state.tasks["sibling"].priority
    # dask: generation = parent.priority[0] - 0.01, ahead of every generation
    assert child[1] == state.tasks["parent"].priority[0] - 0.01
    assert child < state.tasks["older"].priority
    # a subtask does not start a new generation
    assert state.generation == 2


def test_subtask_of_a_forgotten_task_uses_the_current_generation(state):
    submit(state, ["x"], time=1.0)
    submit(state, ["child"], submitting_task="gone", time=1.0)
    assert state.tasks["child"].priority[1] == state.generation == 1


# -- UpdateGraph: restrictions and annotations -----------------------------------------


def test_restrictions_resources_retries_and_annotations_are_recorded(state):
    submit(
        state,
        ["a", "b", "c", "d"],
        restrictions={"a": ["w1", "w2"], "b": ["w1"]},
        loose_restrictions=["b"],
        resources={"c": {"GPU": 1}},
        retries={"c": 2},
        annotations={"d": {"workers": "w3", "retries": 4, "custom": "x"}},
    )
    a, b, c, d = (state.tasks[k] for k in "abcd")
    assert a.worker_restrictions == {"w1", "w2"}
    assert not a.loose_restrictions
    assert b.loose_restrictions
    assert c.resource_restrictions == {"GPU": 1}
    assert c.retries == 2
    assert d.worker_restrictions == {"w3"}
    assert d.retries == 4
    assert d.annotations == {"workers": "w3", "retries": 4, "custom": "x"}


def test_global_retries_apply_to_every_task(state):
    submit(state, {"b": ["a"]}, keys=["b"], retries=3)
    assert state.tasks["a"].retries == state.tasks["b"].retries == 3


def test_allow_other_workers_annotation_loosens_restrictions(state):
    add_worker(state, "w1")
    cmds = submit(
        state,
        ["a"],
        annotations={"a": {"workers": ["w9"], "allow_other_workers": True}},
    )
    assert computed(cmds) == {"a": "w1"}


def test_strict_restriction_to_missing_worker_waits(state):
    add_worker(state, "w1")
    submit(state, ["a"], restrictions={"a": ["w9"]})
    assert state.tasks["a"].state == "no-worker"


def test_loose_restriction_to_missing_worker_runs_elsewhere(state):
    add_worker(state, "w1")
    cmds = submit(state, ["a"], restrictions={"a": ["w9"]}, loose_restrictions=["a"])
    assert computed(cmds) == {"a": "w1"}


# -- UpdateGraph: culling, reuse, rejection --------------------------------------------


def test_tasks_no_wanted_key_needs_are_culled(state):
    event = ev.UpdateGraph(
        stimulus_id="g",
        client="c",
        tasks={"a": 1, "b": 2, "unused": 3, "unused-dep": 4},
        dependencies={"b": ["a"], "unused": ["unused-dep"]},
        keys=["b"],
    )
    state.handle(event)
    assert set(state.tasks) == {"a", "b"}


def test_known_tasks_are_reused_not_recreated(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a")
    a = state.tasks["a"]

    cmds = submit(state, {"b": ["a"]}, keys=["b"])

    assert state.tasks["a"] is a
    assert computed(cmds) == {"b": "w1"}


def test_resubmitting_a_key_in_memory_reports_it_to_the_new_client(state):
    add_worker(state, "w1")
    submit(state, ["a"], client="c1")
    finish(state, "a")

    cmds = submit(state, ["a"], client="c2")

    assert cmds == [KeyInMemory.match(client="c2", key="a")]
    assert {cs.client_key for cs in state.tasks["a"].who_wants} == {"c1", "c2"}


def test_resubmitting_an_erred_key_reports_the_error(state):
    add_worker(state, "w1")
    submit(state, ["a"], client="c1")
    err(state, "a")

    cmds = submit(state, ["a"], client="c2")

    assert cmds == [KeyErred.match(client="c2", key="a")]


def _assert_rejected_without_change(state, event, match):
    before = (dict(state.tasks), set(state.clients), state.generation)
    cmds = state.handle(event)
    assert len(cmds) == 1
    (rejected,) = cmds
    assert isinstance(rejected, GraphRejected)
    assert rejected.client == event.client
    assert rejected.keys == tuple(event.keys)
    assert isinstance(rejected.error, (GraphError, TypeError))
    assert match in str(rejected.error)
    assert (dict(state.tasks), set(state.clients), state.generation) == before
    assert not state.transition_log


def test_graph_with_a_cycle_is_rejected_without_change(state):
    event = ev.UpdateGraph(
        stimulus_id="g",
        client="c",
        tasks={"a": 1, "b": 2, "c": 3},
        dependencies={"a": ["c"], "b": ["a"], "c": ["b"]},
        keys=["c"],
        time=5.0,
    )
    _assert_rejected_without_change(state, event, "Cycle")


def test_graph_with_a_self_dependency_is_rejected(state):
    event = ev.UpdateGraph(
        stimulus_id="g",
        client="c",
        tasks={"a": 1},
        dependencies={"a": ["a"]},
        keys=["a"],
    )
    _assert_rejected_without_change(state, event, "Cycle")


def _assert_cancelled_without_change(state, event):
    """As dask: a graph on lost data cancels the wanted keys ("lost
    dependencies"); here the whole graph is refused and nothing changes."""
    before = (dict(state.tasks), set(state.clients), state.generation)
    cmds = state.handle(event)
    assert cmds == [
        KeyCancelled.match(client=event.client, key=key, reason="lost dependencies")
        for key in event.keys
    ]
    assert (dict(state.tasks), set(state.clients), state.generation) == before
    assert not state.transition_log


def test_graph_with_a_missing_dependency_is_cancelled_without_change(state):
    event = ev.UpdateGraph(
        stimulus_id="g",
        client="c",
        tasks={"b": 2, "c": 3},
        dependencies={"b": ["nowhere"]},
        keys=["b", "c"],
    )
    _assert_cancelled_without_change(state, event)


def test_graph_wanting_an_unknown_key_is_cancelled(state):
    event = ev.UpdateGraph(stimulus_id="g", client="c", tasks={"a": 1}, keys=["zzz"])
    _assert_cancelled_without_change(state, event)


@pytest.mark.parametrize("bad_key", [None, ("x", None), True, frozenset({1})])
def test_graph_with_a_bad_key_type_is_rejected_without_change(state, bad_key):
    event = ev.UpdateGraph(
        stimulus_id="g", client="c", tasks={bad_key: 1, "ok": 2}, keys=["ok", bad_key]
    )
    _assert_rejected_without_change(state, event, "key")


def test_bad_key_type_in_a_dependency_is_rejected(state):
    event = ev.UpdateGraph(
        stimulus_id="g",
        client="c",
        tasks={"b": 2, None: 1},
        dependencies={"b": [None]},
        keys=["b"],
    )
    _assert_rejected_without_change(state, event, "key")


def test_rejected_graph_leaves_existing_tasks_untouched(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    before = {k: ts.state for k, ts in state.tasks.items()}
    n = len(state.transition_log)

    cmds = state.handle(
        ev.UpdateGraph(
            stimulus_id="bad",
            client="c",
            tasks={"b": 1, "c": 2},
            dependencies={"b": ["a", "c"], "c": ["b"]},
            keys=["b"],
        )
    )

    assert of_type(cmds, GraphRejected)
    assert {k: ts.state for k, ts in state.tasks.items()} == before
    assert len(state.transition_log) == n


def test_tuple_bytes_int_and_float_keys_are_accepted(state):
    keys = [("x", 0), b"y", 3, 2.5, ("nested", ("t", 1))]
    cmds = state.handle(graph_event(state, keys))
    assert not of_type(cmds, GraphRejected)
    assert set(state.tasks) == set(keys)


# -- UpdateData ------------------------------------------------------------------------


def test_scattered_data_is_in_memory_on_its_worker(state):
    add_worker(state, "w1")

    cmds = scatter(state, {"d": "w1"}, nbytes={"d": 500})

    ts = state.tasks["d"]
    assert ts.state == "memory"
    assert ts.run_spec is None
    assert ts.who_has == {state.workers["w1"]}
    assert state.workers["w1"].nbytes == 500
    assert cmds == [KeyInMemory.match(client="c", key="d")]
    assert ("d", "released", "memory") in [tuple(t)[:3] for t in state.transition_log]


def test_scattered_shared_data_needs_no_worker(state):
    scatter(state, {"d": None}, shared=True)
    ts = state.tasks["d"]
    assert ts.state == "memory"
    assert ts.shared
    assert not ts.who_has


def test_scattered_data_feeds_a_task_submitted_later(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w2"}, nbytes={"d": 10**6})

    cmds = submit(state, {"b": ["d"]}, keys=["b"])

    assert computed(cmds) == {"b": "w2"}


def test_scatter_replaces_a_running_computation_and_unblocks_dependents(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["b"])

    cmds = scatter(state, {"a": "w1"})

    assert states(state, "a", "b") == {"a": "memory", "b": "processing"}
    assert FreeKeys.match(worker="w1", keys=("a",)) in cmds
    assert ComputeTask.match(key="b", worker="w1") in cmds
    assert state.tasks["a"].who_has == {state.workers["w1"]}


def test_scatter_of_a_key_in_memory_adds_a_replica(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w1"})
    scatter(state, {"d": "w2"}, client="c2")
    ts = state.tasks["d"]
    assert ts.who_has == {state.workers["w1"], state.workers["w2"]}
    assert {cs.client_key for cs in ts.who_wants} == {"c", "c2"}


# -- TaskFinished ----------------------------------------------------------------------


def test_stale_run_from_the_worker_running_a_newer_run_places_the_task_again(state):
    # dask: FreeKeys alone would also cancel the newer run (it names keys, not
    # runs), so the task is released and placed again.
    add_worker(state, "w1")
    submit(state, ["a"])
    old = state.tasks["a"].run_id
    state.handle(ev.RescheduleRequested(stimulus_id="r", key="a"))
    current = state.tasks["a"].run_id

    cmds = finish(state, "a", worker="w1", run_id=old)

    ts = state.tasks["a"]
    assert ts.state == "processing"
    assert cmds == [
        FreeKeys.match(worker="w1", keys=("a",)),
        ComputeTask.match(worker="w1", key="a"),
    ]
    assert ts.run_id > current


def test_stale_run_from_a_worker_the_task_left_is_dropped_there(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]}, loose_restrictions=["a"])
    old = state.tasks["a"].run_id
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w1", status="paused"))
    state.handle(ev.RescheduleRequested(stimulus_id="r", key="a"))
    assert state.tasks["a"].processing_on is state.workers["w2"]

    cmds = finish(state, "a", worker="w1", run_id=old)

    assert cmds == [FreeKeys.match(worker="w1", keys=("a",))]
    assert state.tasks["a"].processing_on is state.workers["w2"]


def test_task_finished_from_a_worker_not_running_it_is_dropped(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})

    cmds = finish(state, "a", worker="w2")

    assert state.tasks["a"].state == "processing"
    assert cmds == [FreeKeys.match(worker="w2", keys=("a",))]


def test_task_finished_for_a_forgotten_key_frees_it(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    release(state, ["a"])

    cmds = finish(state, "a", worker="w1", run_id=1)

    assert cmds == [FreeKeys.match(worker="w1", keys=("a",))]
    assert "a" not in state.tasks


def test_task_finished_from_an_unknown_worker_changes_nothing(state):
    # dask ignores messages from workers it removed; there is nobody to free.
    add_worker(state, "w1")
    submit(state, ["a"])

    cmds = finish(state, "a", worker="ghost")

    assert cmds == []
    assert state.tasks["a"].state == "processing"


def test_stale_shared_result_is_freed_from_the_store(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    release(state, ["a"])

    cmds = finish(state, "a", worker="w1", run_id=1, shared=True)

    assert FreeData.match(key="a") in cmds


def test_second_result_for_a_key_in_memory_adds_a_replica(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    finish(state, "a")

    cmds = finish(state, "a", worker="w2")

    assert cmds == []
    assert state.tasks["a"].who_has == {state.workers["w1"], state.workers["w2"]}


def test_shared_result_survives_without_a_holder(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a", shared=True)
    ts = state.tasks["a"]
    assert ts.shared
    assert ts.who_has == {state.workers["w1"]}


# -- TaskErred -------------------------------------------------------------------------


def test_task_erred_with_retries_runs_again_then_errs(state):
    add_worker(state, "w1")
    submit(state, ["a"], retries=1)

    cmds = err(state, "a")
    assert computed(cmds) == {"a": "w1"}
    assert not of_type(cmds, KeyErred)
    assert state.tasks["a"].retries == 0

    cmds = err(state, "a", exception=KeyError("final"))
    assert state.tasks["a"].state == "erred"
    (msg,) = of_type(cmds, KeyErred)
    assert msg.client == "c"
    assert isinstance(msg.exception, KeyError)


def test_task_erred_with_stale_run_id_is_ignored(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    old = state.tasks["a"].run_id
    state.handle(ev.RescheduleRequested(stimulus_id="r", key="a"))

    cmds = err(state, "a", run_id=old)

    assert cmds == []
    assert state.tasks["a"].state == "processing"


def test_task_erred_from_another_worker_is_ignored(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})

    assert err(state, "a", worker="w2") == []
    assert state.tasks["a"].state == "processing"


# -- WorkerAdded -----------------------------------------------------------------------


def test_worker_added_schedules_no_worker_tasks_in_priority_order(state):
    submit(state, {"b": ["a"], "c": ["a"]}, keys=["b", "c"], restrictions={"a": ["w1"]})
    submit(state, ["x"], restrictions={"x": ["w1"]})
    assert states(state, "a", "x") == {"a": "no-worker", "x": "no-worker"}

    cmds = add_worker(state, "w1", nthreads=2)

    assert list(computed(cmds)) == ["a", "x"]
    assert not state.unrunnable


def test_worker_added_leaves_tasks_restricted_elsewhere(state):
    submit(state, ["a"], restrictions={"a": ["w1"]})
    cmds = add_worker(state, "w2")
    assert cmds == []
    assert state.tasks["a"].state == "no-worker"


def test_worker_added_releases_queued_tasks_into_its_slots(state):
    submit(state, [("x", i) for i in range(5)])
    assert len(state.queued) == 5

    cmds = add_worker(state, "w1", nthreads=2)

    # ceil(1.1 * 2) = 3 slots
    assert len(computed(cmds)) == 3
    assert len(state.queued) == 2


def test_worker_added_twice_is_ignored(state):
    add_worker(state, "w1", nthreads=2)
    add_worker(state, "w1", nthreads=8)
    assert state.total_nthreads == 2
    assert state.workers["w1"].nthreads == 2


def test_worker_added_is_registered_everywhere(state):
    add_worker(state, "w1", nthreads=3, name="alice", memory_limit=10, host="h1")
    ws = state.workers["w1"]
    assert ws in state.running
    assert state.idle == {"w1": ws}
    assert ws in state.idle_task_count
    assert state.total_nthreads == 3
    assert state.workers_list(["alice", "h1"]) == ["w1", "w1"]
    assert state.host_info["h1"]["nthreads"] == 3


# -- WorkerRemoved ---------------------------------------------------------------------


def test_worker_died_only_executing_keys_become_suspicious(state):
    add_worker(state, "w1", nthreads=1)
    add_worker(state, "w2", nthreads=1)
    submit(state, ["a", "b"], restrictions={"a": ["w1"], "b": ["w1"]})

    remove_worker(state, "w1", executing=["a"])

    assert state.tasks["a"].suspicious == 1
    assert state.tasks["b"].suspicious == 0
    assert state.tasks["a"].prefix.suspicious == 1


def test_worker_died_without_executing_info_blames_every_processing_task(state):
    add_worker(state, "w1", nthreads=1)
    submit(state, ["a", "b"])
    remove_worker(state, "w1")
    assert state.tasks["a"].suspicious == state.tasks["b"].suspicious == 1


def test_worker_died_in_flight_tasks_go_elsewhere(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"])
    first = state.tasks["a"].processing_on.address
    other = "w2" if first == "w1" else "w1"

    cmds = remove_worker(state, first, executing=["a"])

    assert computed(cmds) == {"a": other}
    assert first not in state.workers
    assert not of_type(cmds, FreeKeys)  # nothing is sent to a dead worker


def test_task_that_kills_too_many_workers_errs_with_killed_worker(state):
    state.allowed_failures = 2
    submit(state, ["bad", "good"], client="c")
    for i in range(3):
        add_worker(state, f"w{i}", nthreads=2)
        assert states(state, "bad") == {"bad": "processing"}
        cmds = remove_worker(state, f"w{i}", executing=["bad"], reason=f"signal {i}")

    ts = state.tasks["bad"]
    assert ts.state == "erred"
    assert ts.suspicious == 3
    error = ts.exception
    assert isinstance(error, KilledWorker)
    assert error.task == "bad"
    assert error.allowed_failures == 2
    assert error.last_worker.address == "w2"
    assert "signal 2" in str(error)
    (msg,) = of_type(cmds, KeyErred)
    assert msg.key == "bad"
    assert msg.exception is error
    # the innocent task was never executing: not blamed
    assert state.tasks["good"].suspicious == 0
    assert state.tasks["good"].state != "erred"


def test_expected_worker_removal_blames_nobody(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]}, loose_restrictions=["a"])

    remove_worker(state, "w1", expected=True, executing=["a"])

    assert state.tasks["a"].suspicious == 0
    assert state.tasks["a"].processing_on is state.workers["w2"]


def test_worker_removed_recomputes_data_only_it_held(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    keys = ["only", "both"]
    submit(
        state,
        keys,
        restrictions={k: ["w1"] for k in keys},
        loose_restrictions=keys,
    )
    finish(state, "only")
    finish(state, "both")
    state.handle(ev.ReplicasAdded(stimulus_id="rep", worker="w2", keys=["both"]))

    cmds = remove_worker(state, "w1")

    assert states(state, "only", "both") == {"only": "processing", "both": "memory"}
    assert state.tasks["only"].processing_on is state.workers["w2"]
    assert state.tasks["both"].who_has == {state.workers["w2"]}
    assert KeyLost.match(key="only") in cmds
    assert KeyLost.match(key="both") not in cmds


def test_worker_removed_keeps_results_in_the_shared_store(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a", shared=True)

    cmds = remove_worker(state, "w1")

    ts = state.tasks["a"]
    assert ts.state == "memory"
    assert ts.who_has == set()
    assert not of_type(cmds, KeyLost)


def test_worker_removed_unknown_address_is_ignored(state):
    add_worker(state, "w1")
    assert remove_worker(state, "nope") == []
    assert list(state.workers) == ["w1"]


def test_worker_removed_updates_totals_and_sets(state):
    add_worker(state, "w1", nthreads=2, name="n1")
    add_worker(state, "w2", nthreads=3)
    remove_worker(state, "w1", expected=True)
    assert state.total_nthreads == 3
    assert {ws.address for ws in state.running} == {"w2"}
    assert "w1" not in state.idle
    assert state.workers_list(["n1"]) == []


# -- WorkerStatusChanged ---------------------------------------------------------------


def test_paused_worker_gets_no_new_tasks(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w1", status="paused"))

    cmds = submit(state, ["a", "b", "c"])

    assert set(computed(cmds).values()) == {"w2"}
    assert state.workers["w1"] not in state.running


def test_resumed_worker_gets_waiting_work(state):
    add_worker(state, "w1")
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w1", status="paused"))
    submit(state, {"b": ["a"]}, keys=["b"], restrictions={"a": ["w1"]})
    assert state.tasks["a"].state == "no-worker"

    cmds = state.handle(
        ev.WorkerStatusChanged(stimulus_id="r", address="w1", status="running")
    )

    assert computed(cmds) == {"a": "w1"}


def test_resumed_worker_takes_queued_roots(state):
    add_worker(state, "w1")
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w1", status="paused"))
    submit(state, [("x", i) for i in range(4)])
    assert len(state.queued) == 4

    cmds = state.handle(
        ev.WorkerStatusChanged(stimulus_id="r", address="w1", status="running")
    )

    assert len(computed(cmds)) == 2


def test_unknown_worker_status_is_an_error(state):
    add_worker(state, "w1")
    with pytest.raises(ValueError, match="status"):
        state.handle(
            ev.WorkerStatusChanged(stimulus_id="x", address="w1", status="dancing")
        )


# -- WorkerHeartbeat -------------------------------------------------------------------


def test_heartbeat_records_longest_execution_and_keeps_a_fitting_average(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, [("inc", 0), ("inc", 1)])
    finish(state, ("inc", 0), duration=1.0)
    tp = state.task_prefixes["inc"]

    state.handle(
        ev.WorkerHeartbeat(
            stimulus_id="hb", address="w1", executing={("inc", 1): 1.5}, time=3.0
        )
    )

    assert tp.max_exec_time == 1.5
    assert tp.duration_average == 1.0
    assert state.workers["w1"].executing_count == 1
    assert state.workers["w1"].last_seen == 3.0


def test_heartbeat_resets_average_when_a_task_runs_past_twice_it(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, [("inc", 0), ("inc", 1)])
    finish(state, ("inc", 0), duration=1.0)
    tp = state.task_prefixes["inc"]

    state.handle(
        ev.WorkerHeartbeat(stimulus_id="hb", address="w1", executing={("inc", 1): 3.0})
    )

    assert tp.duration_average == -1
    assert tp.max_exec_time == 3.0
    assert state.task_duration["inc"] == 6.0


def test_heartbeat_ignores_keys_not_processing_on_that_worker(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    state.handle(
        ev.WorkerHeartbeat(
            stimulus_id="hb", address="w2", executing={"a": 99.0, "zz": 5.0}
        )
    )
    assert state.tasks["a"].prefix.max_exec_time == -1


# -- clients ---------------------------------------------------------------------------


def test_client_releases_keys_forgets_unshared_results(state):
    add_worker(state, "w1")
    submit(state, ["a"], client="c1")
    submit(state, ["a"], client="c2")
    finish(state, "a")

    release(state, ["a"], client="c1")
    assert state.tasks["a"].state == "memory"

    release(state, ["a"], client="c2")
    assert "a" not in state.tasks


def test_client_releases_unknown_or_unwanted_keys_is_harmless(state):
    add_worker(state, "w1")
    submit(state, ["a"], client="c1")
    assert release(state, ["a", "zz"], client="c2") == []
    assert release(state, ["a"], client="nobody") == []
    assert state.tasks["a"].state == "processing"


def test_client_releasing_a_running_task_cancels_it_on_the_worker(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    cmds = release(state, ["a"])
    assert cmds == [FreeKeys.match(worker="w1", keys=("a",))]
    assert state.workers["w1"].processing == {}


def test_client_desires_existing_keys_and_hears_about_finished_ones(state):
    add_worker(state, "w1")
    submit(state, ["a", "b"], client="c1")
    finish(state, "a")

    cmds = state.handle(
        ev.ClientDesiresKeys(stimulus_id="d", client="c2", keys=["a", "b", "zz"])
    )

    assert cmds == [
        KeyInMemory.match(client="c2", key="a"),
        # An unknown key (its data is gone) is reported cancelled at once.
        KeyCancelled.match(client="c2", key="zz", reason="lost dependencies"),
    ]
    assert "zz" not in state.tasks
    assert "c2" in state.clients
    assert {cs.client_key for cs in state.tasks["b"].who_wants} == {"c1", "c2"}
    release(state, ["a"], client="c1")
    assert state.tasks["a"].state == "memory"  # c2 still wants it


def test_client_removed_releases_all_its_keys(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, ["a", "b"], client="c1")
    submit(state, ["b"], client="c2")

    cmds = state.handle(ev.ClientRemoved(stimulus_id="bye", client="c1"))

    assert "c1" not in state.clients
    assert "a" not in state.tasks
    assert state.tasks["b"].state == "processing"
    assert FreeKeys.match(worker="w1", keys=("a",)) in cmds


def test_fire_and_forget_client_cannot_be_removed(state):
    state.handle(ev.ClientRemoved(stimulus_id="x", client="fire-and-forget"))
    assert "fire-and-forget" in state.clients


def test_fire_and_forget_key_is_forgotten_once_done(state):
    add_worker(state, "w1")
    submit(state, ["a"], client="fire-and-forget")
    finish(state, "a")
    assert "a" not in state.tasks


def test_client_added_registers_it(state, hooks):
    state.handle(ev.ClientAdded(stimulus_id="hi", client="c9"))
    assert "c9" in state.clients
    assert hooks.notifications == [("add_client", {"client": "c9"})]


# -- CancelRequested -------------------------------------------------------------------


def test_cancel_cancels_the_key_and_its_dependents(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"], "c": ["b"]}, keys=["a", "b", "c"])

    cmds = state.handle(ev.CancelRequested(stimulus_id="x", client="c", keys=["a"]))

    cancelled = {m.key for m in of_type(cmds, KeyCancelled) if m.reason == "cancelled"}
    assert cancelled == {"a", "b", "c"}
    assert state.tasks == {}
    assert FreeKeys.match(worker="w1", keys=("a",)) in cmds


def test_cancel_keeps_keys_other_clients_want(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["a"], client="c1")
    submit(state, {"b": ["a"]}, keys=["b"], client="c2")

    cmds = state.handle(ev.CancelRequested(stimulus_id="x", client="c1", keys=["a"]))

    assert KeyCancelled.match(client="c1", key="a") in cmds
    assert not [m for m in of_type(cmds, KeyCancelled) if m.client == "c2"]
    assert states(state, "a", "b") == {"a": "processing", "b": "waiting"}


def test_cancel_of_a_key_shared_with_another_client_does_nothing(state):
    add_worker(state, "w1")
    submit(state, ["a"], client="c1")
    submit(state, ["a"], client="c2")

    cmds = state.handle(ev.CancelRequested(stimulus_id="x", client="c1", keys=["a"]))

    assert cmds == []
    assert len(state.tasks["a"].who_wants) == 2


def test_forced_cancel_cancels_for_every_client(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"]}, keys=["a"], client="c1")
    submit(state, {"b": ["a"]}, keys=["b"], client="c2")

    cmds = state.handle(
        ev.CancelRequested(stimulus_id="x", client="c1", keys=["a"], force=True)
    )

    got = {(m.client, m.key) for m in of_type(cmds, KeyCancelled)}
    assert got == {("c1", "a"), ("c2", "b")}
    assert state.tasks == {}


def test_cancel_from_an_unknown_client_is_ignored(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    assert (
        state.handle(ev.CancelRequested(stimulus_id="x", client="z", keys=["a"])) == []
    )


def test_cancel_key_helper_matches_the_event(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    stimuli.cancel_key(state, "a", "c")
    assert "a" not in state.tasks


# -- RetryRequested --------------------------------------------------------------------


def test_retry_reruns_an_erred_task_and_tells_clients(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    err(state, "a")

    cmds = state.handle(ev.RetryRequested(stimulus_id="r", client="c", keys=["a"]))

    assert KeyRetried.match(client="c", key="a") in cmds
    assert computed(cmds) == {"a": "w1"}


def test_retry_of_a_chain_reruns_from_the_failed_root(state):
    add_worker(state, "w1")
    submit(state, {"b": ["a"], "c": ["b"]}, keys=["c"])
    err(state, "a")

    cmds = state.handle(ev.RetryRequested(stimulus_id="r", client="c", keys=["c"]))

    assert states(state, "a", "b", "c") == {
        "a": "processing",
        "b": "waiting",
        "c": "waiting",
    }
    assert computed(cmds) == {"a": "w1"}
    finish(state, "a")
    finish(state, "b")
    finish(state, "c")
    assert states(state, "c") == {"c": "memory"}


def test_retry_of_healthy_or_unknown_keys_does_nothing(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    assert (
        state.handle(ev.RetryRequested(stimulus_id="r", client="c", keys=["a", "z"]))
        == []
    )


# -- TaskSeceded -----------------------------------------------------------------------


def test_seceded_task_frees_its_occupancy_and_slot(state):
    add_worker(state, "w1", nthreads=1)
    keys = [("x", i) for i in range(4)]
    submit(state, keys)
    ws = state.workers["w1"]
    running = [k for k in keys if state.tasks[k].state == "processing"]
    assert len(running) == 2
    occ = ws.occupancy

    cmds = state.handle(ev.TaskSeceded(stimulus_id="s", key=running[0], worker="w1"))

    ts = state.tasks[running[0]]
    assert ts in ws.long_running
    assert ts.state == "processing"
    # a slot opened: one more queued root goes out
    assert len(computed(cmds)) == 1
    assert len(ws.processing) == 3
    # the seceded task no longer counts: two tasks of 0.5 s
    assert ws.occupancy == pytest.approx(occ)
    assert ws.task_prefix_count == {ts.prefix: 2}


def test_seceded_task_reports_its_compute_duration(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    state.handle(
        ev.TaskSeceded(stimulus_id="s", key="a", worker="w1", compute_duration=4.0)
    )
    assert state.tasks["a"].prefix.duration_average == 4.0


def test_seceded_task_that_finishes_leaves_occupancy_at_zero(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    state.handle(ev.TaskSeceded(stimulus_id="s", key="a", worker="w1"))
    state.handle(ev.TaskSeceded(stimulus_id="s2", key="a", worker="w1"))  # idempotent

    finish(state, "a")

    ws = state.workers["w1"]
    assert ws.occupancy == 0
    assert not ws.long_running
    assert state.total_occupancy == 0


# -- RescheduleRequested ---------------------------------------------------------------


def test_reschedule_moves_a_task_back_through_waiting(state):
    add_worker(state, "w1")
    submit(state, ["a"])

    cmds = state.handle(ev.RescheduleRequested(stimulus_id="r", key="a", worker="w1"))

    assert cmds[0] == FreeKeys.match(worker="w1", keys=("a",))
    assert computed(cmds) == {"a": "w1"}


def test_reschedule_from_a_worker_not_running_it_is_ignored(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    cmds = state.handle(ev.RescheduleRequested(stimulus_id="r", key="a", worker="w9"))
    assert cmds == []


def test_reschedule_of_a_finished_task_is_ignored(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a")
    assert state.handle(ev.RescheduleRequested(stimulus_id="r", key="a")) == []


# -- MissingData -----------------------------------------------------------------------


def test_missing_replica_on_one_worker_keeps_the_others(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    finish(state, "a")
    state.handle(ev.ReplicasAdded(stimulus_id="rep", worker="w2", keys=["a"]))

    cmds = state.handle(ev.MissingData(stimulus_id="m", key="a", worker="w1"))

    assert cmds == []
    assert state.tasks["a"].who_has == {state.workers["w2"]}


def test_missing_last_replica_recomputes(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a")

    cmds = state.handle(ev.MissingData(stimulus_id="m", key="a", worker="w1"))

    assert state.tasks["a"].state == "processing"
    assert KeyLost.match(key="a") in cmds


def test_missing_shared_data_drops_every_copy(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a", shared=True)

    state.handle(ev.MissingData(stimulus_id="m", key="a", worker=None))

    assert state.tasks["a"].state == "processing"
    assert not state.tasks["a"].shared


def test_missing_scattered_data_is_forgotten(state):
    add_worker(state, "w1")
    scatter(state, {"d": "w1"})
    cmds = state.handle(ev.MissingData(stimulus_id="m", key="d", worker="w1"))
    assert "d" not in state.tasks
    assert KeyCancelled.match(key="d") in cmds


# -- ReplicasAdded ---------------------------------------------------------------------


def test_replicas_added_records_copies_and_frees_stale_keys(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a", "b"], restrictions={"a": ["w1"], "b": ["w1"]})
    finish(state, "a")

    cmds = state.handle(
        ev.ReplicasAdded(stimulus_id="rep", worker="w2", keys=["a", "b", "zz"])
    )

    assert state.workers["w2"] in state.tasks["a"].who_has
    assert cmds == [FreeKeys.match(worker="w2", keys=("b", "zz"))]


# -- RetireWorkers ---------------------------------------------------------------------


def test_retiring_worker_hands_over_unique_data_then_closes(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    finish(state, "a")

    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))

    assert cmds == [AcquireReplicas.match(worker="w2", keys=("a",), source="w1")]
    assert state.workers["w1"].status == "closing_gracefully"
    assert state.workers["w1"] not in state.running

    cmds = state.handle(ev.ReplicasAdded(stimulus_id="got", worker="w2", keys=["a"]))

    assert cmds == [CloseWorker.match(worker="w1", reason="retired")]
    assert "w1" not in state.workers
    assert state.tasks["a"].who_has == {state.workers["w2"]}
    assert state.tasks["a"].suspicious == 0


def test_retiring_worker_with_only_shared_data_closes_at_once(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    finish(state, "a", shared=True)

    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))

    assert cmds == [CloseWorker.match(worker="w1")]
    assert state.tasks["a"].state == "memory"


def test_retiring_worker_finishes_its_tasks_first(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})

    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))
    assert cmds == []
    # no new work for a retiring worker
    assert computed(submit(state, ["b"])) == {"b": "w2"}

    cmds = finish(state, "a")
    assert AcquireReplicas.match(worker="w2", keys=("a",), source="w1") in cmds


def test_retire_without_close_removes_but_does_not_close(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    cmds = state.handle(
        ev.RetireWorkers(stimulus_id="ret", workers=["w1"], close_workers=False)
    )
    assert cmds == []
    assert "w1" not in state.workers


def test_retirement_fails_when_no_worker_can_take_the_data(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    finish(state, "a")

    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))

    assert cmds == [RetirementFailed.match(workers=("w1",))]
    assert state.workers["w1"].status == "running"


def test_retire_by_name(state):
    add_worker(state, "w1", name="alice")
    add_worker(state, "w2")
    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["alice"]))
    assert cmds == [CloseWorker.match(worker="w1")]


# -- RestartRequested ------------------------------------------------------------------


def test_restart_forgets_everything_and_tells_clients(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, {"b": ["a"]}, keys=["b"], client="c1")
    submit(state, ["x"], client="c2")
    finish(state, "x")
    submit(state, ["x"], client="c1")

    cmds = state.handle(ev.RestartRequested(stimulus_id="restart"))

    assert state.tasks == {}
    cancelled = {(m.client, m.key) for m in of_type(cmds, KeyCancelled)}
    assert {("c1", "b"), ("c2", "x"), ("c1", "x")} <= cancelled
    freed = {k for m in of_type(cmds, FreeKeys) for k in m.keys}
    assert freed == {"a", "x"}
    assert state.workers["w1"].processing == {}
    assert state.workers["w1"].has_what == {}
    assert state.total_occupancy == 0


# -- Tick ------------------------------------------------------------------------------


def test_tick_errs_unrunnable_tasks_after_no_workers_timeout(state):
    state.no_workers_timeout = 5.0
    submit(
        state, ["a"], restrictions={"a": ["w9"]}, resources={"a": {"GPU": 1}}, time=1
    )

    assert tick(state, 6.0) == []
    cmds = tick(state, 6.5)

    ts = state.tasks["a"]
    assert ts.state == "erred"
    assert isinstance(ts.exception, NoValidWorkerError)
    assert "w9" in str(ts.exception)
    (msg,) = of_type(cmds, KeyErred)
    assert msg.exception is ts.exception


def test_tick_without_timeout_never_errs(state):
    submit(state, ["a"], restrictions={"a": ["w9"]})
    assert tick(state, 1e9) == []
    assert state.tasks["a"].state == "no-worker"


def test_idle_tick_realigns_occupancy_with_new_estimates(state):
    add_worker(state, "w1", nthreads=4)
    submit(state, [("f", i) for i in range(3)] + [("g", 0)])
    ws = state.workers["w1"]
    assert ws.occupancy == pytest.approx(4 * 0.5)
    state.task_prefixes["g"].duration_average = 10.0  # estimate changed

    tick(state, 1.0)
    assert ws.occupancy == pytest.approx(2.0)  # only realigned when idle

    tick(state, 2.0, is_idle=True)
    assert ws.occupancy == pytest.approx(3 * 0.5 + 10.0)
    assert state.total_occupancy == pytest.approx(ws.occupancy)


def test_tick_advances_the_clock(state):
    tick(state, 42.0)
    tick(state, 7.0)
    assert state.now == 42.0


# -- unknown keys are harmless for every per-key event ---------------------------------


@pytest.mark.parametrize(
    "event",
    [
        ev.TaskFinished(stimulus_id="s", key="zz", worker="nobody"),
        ev.TaskErred(stimulus_id="s", key="zz", worker="nobody"),
        ev.TaskSeceded(stimulus_id="s", key="zz", worker="nobody"),
        ev.RescheduleRequested(stimulus_id="s", key="zz"),
        ev.MissingData(stimulus_id="s", key="zz"),
        ev.ReplicasAdded(stimulus_id="s", worker="nobody", keys=["zz"]),
        ev.StealResponse(stimulus_id="s", key="zz", worker="nobody", state="ready"),
        ev.WorkerHeartbeat(stimulus_id="s", address="nobody"),
        ev.WorkerStatusChanged(stimulus_id="s", address="nobody", status="paused"),
        ev.ClientReleasesKeys(stimulus_id="s", client="nobody", keys=["zz"]),
        ev.RetryRequested(stimulus_id="s", client="nobody", keys=["zz"]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_about_unknown_keys_or_workers_change_nothing(state, event):
    add_worker(state, "w1")
    submit(state, ["a"])
    before = len(state.transition_log)
    assert state.handle(event) == []
    assert len(state.transition_log) == before
    assert state.tasks["a"].run_spec == spec("a")


def test_retiring_worker_whose_task_was_released_retires_by_the_next_tick(state):
    # dask's retire loop polls; the core re-checks at the latest on a Tick.
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))

    cmds = release(state, ["a"])
    cmds += tick(state, 1.0)

    assert CloseWorker.match(worker="w1", reason="retired") in cmds
    assert "w1" not in state.workers


def test_tick_after_everything_is_released_gives_the_tables_back(state):
    # An emptied dict keeps its largest table until cleared: after a big map the
    # core would otherwise hold tens of MB with nothing in them.
    import sys

    add_worker(state, "w1", nthreads=1)
    keys = [f"x-{i}" for i in range(100)]
    submit(state, keys)
    for key in keys:
        if state.tasks[key].state == "processing":
            finish(state, key)
    release(state, keys)
    assert not state.tasks
    grown = sys.getsizeof(state.tasks)
    assert grown > sys.getsizeof({})
    assert tick(state, 10.0) == []
    assert sys.getsizeof(state.tasks) == sys.getsizeof({})
    cs = state.clients["c"]
    assert sys.getsizeof(cs.wants_what) == sys.getsizeof(set())
    # Still a working core afterwards.
    submit(state, ["y"])
    assert state.tasks["y"].state == "processing"
