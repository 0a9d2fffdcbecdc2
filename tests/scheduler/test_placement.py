"""Placement: queuing, co-assignment, decide_worker, occupancy and estimates."""

from __future__ import annotations

import math

import pytest

from localsched.scheduler import events as ev
from localsched.scheduler import placement
from localsched.scheduler.commands import ComputeTask, KeyErred
from localsched.scheduler.state import SchedulerState
from tests.scheduler.factories import (
    add_worker,
    computed,
    finish,
    of_type,
    scatter,
    states,
    submit,
    tick,
)


def roots(name: str, n: int) -> list[tuple[str, int]]:
    return [(name, i) for i in range(n)]


# -- root-ish detection ----------------------------------------------------------------


def test_large_group_without_dependencies_is_rootish(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, roots("x", 5))
    assert all(placement.is_rootish(state, state.tasks[k]) for k in roots("x", 5))


def test_group_no_larger_than_twice_the_threads_is_not_rootish(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, roots("x", 4))
    assert not placement.is_rootish(state, state.tasks[("x", 0)])
    assert all(state.tasks[k].state == "processing" for k in roots("x", 4))


def test_restricted_tasks_are_never_rootish(state):
    add_worker(state, "w1")
    submit(state, roots("x", 5), restrictions={("x", 0): ["w1"]})
    assert not placement.is_rootish(state, state.tasks[("x", 0)])
    assert placement.is_rootish(state, state.tasks[("x", 1)])


def test_group_with_many_dependency_tasks_is_not_rootish(state):
    add_worker(state, "w1")
    # 3 tasks of y each depending on all of 5 x's: dependency groups hold 5 tasks
    graph = {("y", i): roots("x", 5) for i in range(3)}
    submit(state, graph)
    assert placement.is_rootish(state, state.tasks[("x", 0)])
    assert not placement.is_rootish(state, state.tasks[("y", 0)])


def test_group_depending_on_five_groups_is_not_rootish():
    s = SchedulerState(validate=True)
    add_worker(s, "w1")
    deps = [(f"d{j}", 0) for j in range(5)]
    submit(s, {("y", i): deps for i in range(3)})
    assert not placement.is_rootish(s, s.tasks[("y", 0)])
    s4 = SchedulerState(validate=True)
    add_worker(s4, "w1")
    submit(s4, {("y", i): deps[:4] for i in range(3)})
    assert placement.is_rootish(s4, s4.tasks[("y", 0)])


# -- queuing (worker-saturation 1.1) ---------------------------------------------------


@pytest.mark.parametrize(
    ("nthreads", "slots"), [(1, 2), (2, 3), (4, 5), (10, 11), (11, 13)]
)
def test_queuing_fills_ceil_saturation_times_threads_slots(state, nthreads, slots):
    add_worker(state, "w1", nthreads=nthreads)
    n = 3 * slots
    cmds = submit(state, roots("x", n))
    assert len(computed(cmds)) == slots == math.ceil(1.1 * nthreads)
    assert len(state.queued) == n - slots
    assert state.workers["w1"] not in state.idle_task_count


def test_queued_tasks_go_out_in_priority_order(state):
    add_worker(state, "w1", nthreads=1)
    keys = roots("x", 6)
    submit(state, keys)
    sent = [k for k in keys if state.tasks[k].state == "processing"]
    assert sent == keys[:2]

    for expected in keys[2:]:
        cmds = finish(state, sent.pop(0))
        (key,) = computed(cmds)
        assert key == expected
        sent.append(key)


def test_slots_spread_over_workers_by_processing_per_thread(state):
    add_worker(state, "w1", nthreads=1)
    add_worker(state, "w2", nthreads=3)
    cmds = submit(state, roots("x", 20))
    per_worker = {}
    for worker in computed(cmds).values():
        per_worker[worker] = per_worker.get(worker, 0) + 1
    assert per_worker == {"w1": 2, "w2": 4}


def test_long_running_tasks_do_not_use_a_slot(state):
    add_worker(state, "w1", nthreads=1)
    submit(state, roots("x", 6))
    assert placement.task_slots_available(state, state.workers["w1"]) == 0
    state.handle(ev.TaskSeceded(stimulus_id="s", key=("x", 0), worker="w1"))
    ws = state.workers["w1"]
    # refilled at once: 3 processing, one of them long-running
    assert len(ws.processing) == 3
    assert placement.task_slots_available(state, ws) == 0


def test_downstream_task_takes_the_freed_slot_before_a_new_root(state):
    add_worker(state, "w1", nthreads=2)  # 3 slots
    n = 6
    graph = {("y", i): [("x", i)] for i in range(n)}
    submit(state, graph)
    assert len(state.queued) == n - 3

    cmds = finish(state, ("x", 0))

    # y0 (not root-ish: its dependency group holds 6 tasks) fills the slot
    assert computed(cmds) == {("y", 0): "w1"}
    assert len(state.queued) == n - 3
    cmds = finish(state, ("y", 0))
    assert computed(cmds) == {("x", 3): "w1"}


def test_queued_roots_are_released_after_downstream_tasks_of_the_stimulus(state):
    add_worker(state, "w1", nthreads=1)
    add_worker(state, "w2", nthreads=1)
    n = 8
    submit(state, roots("x", n))
    x0_worker = state.tasks[("x", 0)].processing_on.address
    other = "w2" if x0_worker == "w1" else "w1"
    submit(state, {"y": [("x", 0)]}, keys=["y"], restrictions={"y": [other]})
    assert len(state.queued) == n - 4

    cmds = finish(state, ("x", 0))

    # y is placed first (on the other worker); the slot x0 freed then gets the
    # best queued root.
    assert list(computed(cmds).items()) == [("y", other), (("x", 4), x0_worker)]


def test_queued_root_waits_when_every_worker_is_paused(state):
    add_worker(state, "w1")
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w1", status="paused"))
    submit(state, roots("x", 3))
    assert len(state.queued) == 3
    assert placement.decide_worker_rootish_queuing_enabled(state) is None


# -- queuing disabled: co-assignment ---------------------------------------------------


def test_without_queuing_siblings_are_co_assigned_to_one_worker():
    s = SchedulerState(validate=True, worker_saturation=float("inf"))
    add_worker(s, "w1", nthreads=2)
    add_worker(s, "w2", nthreads=2)

    cmds = submit(s, roots("x", 16))

    placed = computed(cmds)
    assert not s.queued
    assert len(placed) == 16
    # floor(16 tasks / 4 threads * 2 threads) = 8 consecutive tasks per worker
    first = {placed[("x", i)] for i in range(8)}
    second = {placed[("x", i)] for i in range(8, 16)}
    assert len(first) == len(second) == 1
    assert first != second
    assert s.task_groups["x"].last_worker is None  # cleared on the final task


def test_without_queuing_roots_without_workers_are_no_worker():
    s = SchedulerState(validate=True, worker_saturation=float("inf"))
    submit(s, roots("x", 3))
    assert {ts.state for ts in s.tasks.values()} == {"no-worker"}
    assert not s.queued
    cmds = add_worker(s, "w1")
    assert len(computed(cmds)) == 3


def test_without_queuing_every_worker_keeps_an_open_slot():
    s = SchedulerState(validate=True, worker_saturation=float("inf"))
    add_worker(s, "w1", nthreads=1)
    submit(s, roots("x", 10))
    assert s.workers["w1"] in s.idle_task_count


# -- decide_worker ---------------------------------------------------------------------


def test_task_goes_to_the_worker_holding_its_data(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    add_worker(state, "w3")
    scatter(state, {"d": "w2"}, nbytes={"d": 10**6})

    cmds = submit(state, {"b": ["d"]}, keys=["b"])

    assert computed(cmds) == {"b": "w2"}


def test_task_goes_where_more_of_its_data_is(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"small": "w1", "big": "w2"}, nbytes={"small": 10, "big": 10**8})

    cmds = submit(state, {"b": ["small", "big"]}, keys=["b"])

    assert computed(cmds) == {"b": "w2"}


def test_ties_go_to_the_worker_storing_fewer_bytes(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d1": "w1", "d2": "w2"}, nbytes={"d1": 1000, "d2": 1000})
    scatter(state, {"other": "w1"}, nbytes={"other": 5000})

    cmds = submit(state, {"b": ["d1", "d2"]}, keys=["b"])

    assert computed(cmds) == {"b": "w2"}


def test_only_data_holders_are_candidates_even_when_busy(state):
    # dask's decide_worker: holders of any dependency, then the objective.
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w1"}, nbytes={"d": 10})
    busy = [f"busy{i}" for i in range(6)]
    submit(state, busy, restrictions={k: ["w1"] for k in busy})

    cmds = submit(state, {"b": ["d"]}, keys=["b"])

    assert computed(cmds) == {"b": "w1"}


def test_among_data_holders_the_least_busy_wins(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    add_worker(state, "w3")
    scatter(state, {"d": "w1"}, nbytes={"d": 10})
    state.handle(ev.ReplicasAdded(stimulus_id="rep", worker="w2", keys=["d"]))
    busy = [f"busy{i}" for i in range(6)]
    submit(state, busy, restrictions={k: ["w1"] for k in busy})

    cmds = submit(state, {"b": ["d"]}, keys=["b"])

    assert computed(cmds) == {"b": "w2"}


def test_restricted_task_ignores_holders_outside_its_restrictions(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w1"}, nbytes={"d": 10**8})
    cmds = submit(state, {"b": ["d"]}, keys=["b"], restrictions={"b": ["w2"]})
    assert computed(cmds) == {"b": "w2"}


def test_worker_objective_is_start_time_then_stored_bytes(state):
    add_worker(state, "w1", nthreads=2)
    scatter(state, {"d": "w1"}, nbytes={"d": 2 * 10**8})
    add_worker(state, "w2")
    submit(state, {"b": ["d"]}, keys=["b"], restrictions={"b": ["w1"]})
    ts = state.tasks["b"]
    w1, w2 = state.workers["w1"], state.workers["w2"]

    assert placement.worker_objective(state, ts, w1) == (0.5 / 2, 2 * 10**8)
    assert placement.worker_objective(state, ts, w2) == (pytest.approx(2.0), 0)


def test_comm_cost_of_shared_data_uses_memory_bandwidth(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a"], restrictions={"a": ["w1"]})
    finish(state, "a", nbytes=10**9, shared=True)
    submit(state, {"b": ["a"]}, keys=["b"], restrictions={"b": ["w1"]})
    ts = state.tasks["b"]
    assert placement.get_comm_cost(state, ts, state.workers["w1"]) == 0
    assert placement.get_comm_cost(state, ts, state.workers["w2"]) == pytest.approx(
        10**9 / state.shm_bandwidth
    )


def test_restriction_by_name(state):
    add_worker(state, "w1", name="alice")
    add_worker(state, "w2", name="bob")
    cmds = submit(state, ["a"], restrictions={"a": ["bob"]})
    assert computed(cmds) == {"a": "w2"}


def test_resource_restriction_needs_enough_of_the_resource(state):
    add_worker(state, "w1", resources={"GPU": 1})
    add_worker(state, "w2", resources={"GPU": 2})
    add_worker(state, "w3")
    submit(state, ["a", "b"], resources={"a": {"GPU": 2}, "b": {"GPU": 1}})

    assert placement.valid_workers(state, state.tasks["a"]) == {state.workers["w2"]}
    assert placement.valid_workers(state, state.tasks["b"]) == {
        state.workers["w1"],
        state.workers["w2"],
    }
    assert state.tasks["a"].processing_on is state.workers["w2"]


def test_restrictions_and_resources_intersect(state):
    add_worker(state, "w1", resources={"GPU": 1})
    add_worker(state, "w2", resources={"GPU": 1})
    submit(state, ["a"], restrictions={"a": ["w1"]}, resources={"a": {"GPU": 1}})
    assert placement.valid_workers(state, state.tasks["a"]) == {state.workers["w1"]}


def test_valid_workers_is_none_without_restrictions_and_running_when_some_paused(
    state,
):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, {"b": ["a"]}, keys=["b"])
    b = state.tasks["b"]
    assert placement.valid_workers(state, b) is None
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w2", status="paused"))
    assert placement.valid_workers(state, b) == {state.workers["w1"]}


def test_host_restrictions_match_worker_hosts(state):
    add_worker(state, "w1", host="h1")
    add_worker(state, "w2", host="h2")
    submit(state, ["a"], restrictions={"a": ["w9"]})
    ts = state.tasks["a"]
    ts.worker_restrictions = None
    ts.host_restrictions = {"h2"}
    assert placement.valid_workers(state, ts) == {state.workers["w2"]}


def test_occupied_resources_are_tracked_and_released(state):
    add_worker(state, "w1", resources={"GPU": 2})
    submit(state, ["a", "b"], resources={"a": {"GPU": 1}, "b": {"GPU": 1}})
    ws = state.workers["w1"]
    assert ws.used_resources == {"GPU": 2}
    finish(state, "a")
    assert ws.used_resources == {"GPU": 1}


# -- the fast path: round-robin --------------------------------------------------------


def test_independent_tasks_round_robin_over_empty_workers(state):
    for i in range(3):
        add_worker(state, f"w{i}")
    cmds = submit(state, ["a", "b", "c"])
    assert sorted(computed(cmds).values()) == ["w0", "w1", "w2"]


def test_round_robin_rotates_over_empty_workers_in_address_order(state):
    # dask's idle pool is a SortedDict: one task at a time visits w0, w1, w2, ...
    for i in range(3):
        add_worker(state, f"w{i}")
    placed = []
    for key in "abcdef":
        placed.append(computed(submit(state, [key]))[key])
        finish(state, key)
    assert placed == ["w0", "w1", "w2", "w0", "w1", "w2"]


def test_fast_path_prefers_the_least_occupied_worker(state):
    add_worker(state, "w0", nthreads=4)
    add_worker(state, "w1", nthreads=4)
    submit(state, ["a", "b"], restrictions={"a": ["w0"], "b": ["w0"]})
    submit(state, ["c"], restrictions={"c": ["w1"]})

    cmds = submit(state, ["d"])

    assert computed(cmds) == {"d": "w1"}


def test_many_workers_take_independent_tasks_in_turn(state):
    for i in range(25):
        add_worker(state, f"w{i:02}")
    cmds = submit(state, [f"t{i}" for i in range(25)])
    assert len(set(computed(cmds).values())) == 25


# -- memory safety valve ---------------------------------------------------------------


def test_task_whose_inputs_exceed_worker_memory_errs(state):
    add_worker(state, "w1", memory_limit=1000)
    scatter(state, {"d": "w1"}, nbytes={"d": 5000})

    cmds = submit(state, {"b": ["d"]}, keys=["b"])

    ts = state.tasks["b"]
    assert ts.state == "erred"
    assert isinstance(ts.exception, MemoryError)
    assert not of_type(cmds, ComputeTask)
    assert of_type(cmds, KeyErred)[0].key == "b"


def test_oversized_no_worker_task_errs_when_its_worker_arrives(state):
    add_worker(state, "w1")
    scatter(state, {"d": "w1"}, nbytes={"d": 5000})
    submit(state, {"b": ["d"]}, keys=["b"], restrictions={"b": ["w2"]})
    assert states(state, "b") == {"b": "no-worker"}

    cmds = add_worker(state, "w2", memory_limit=1000)

    ts = state.tasks["b"]
    assert ts.state == "erred"
    assert isinstance(ts.exception, MemoryError)
    assert not state.unrunnable
    assert of_type(cmds, KeyErred)[0].key == "b"


# -- occupancy -------------------------------------------------------------------------


def test_occupancy_grows_by_the_estimate_and_shrinks_by_the_same(state):
    add_worker(state, "w1", nthreads=4)
    submit(state, ["a", "b"])
    ws = state.workers["w1"]
    assert ws.occupancy == pytest.approx(1.0)
    assert state.total_occupancy == pytest.approx(1.0)

    finish(state, "a", duration=3.0)  # estimate changes; b keeps its realigned cost

    assert ws.processing == {state.tasks["b"]: pytest.approx(0.5)}
    assert ws.occupancy == pytest.approx(0.5)


def test_occupancy_includes_transfer_time_of_missing_dependencies(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    scatter(state, {"d": "w1"}, nbytes={"d": 10**8})
    submit(state, {"b": ["d"]}, keys=["b"], restrictions={"b": ["w2"]})
    ws = state.workers["w2"]
    assert ws.occupancy == pytest.approx(0.5 + 10**8 / state.bandwidth)


def test_first_duration_realigns_tasks_counted_with_the_unknown_guess(state):
    add_worker(state, "w1", nthreads=4)
    keys = [("inc", i) for i in range(4)]
    submit(state, keys)
    ws = state.workers["w1"]
    assert ws.occupancy == pytest.approx(4 * 0.5)

    finish(state, ("inc", 0), duration=2.0)

    assert ws.occupancy == pytest.approx(3 * 2.0)
    assert all(cost == pytest.approx(2.0) for cost in ws.processing.values())
    assert state.total_occupancy == pytest.approx(ws.occupancy)


def test_known_duration_is_not_realigned_again(state):
    add_worker(state, "w1", nthreads=4)
    submit(state, [("inc", i) for i in range(4)])
    finish(state, ("inc", 0), duration=2.0)
    ws = state.workers["w1"]

    finish(state, ("inc", 1), duration=10.0)

    # estimates moved to 6.0 but in-flight costs keep their value until realigned
    assert state.task_prefixes["inc"].duration_average == 6.0
    assert ws.occupancy == pytest.approx(2 * 2.0)
    state.handle(ev.Tick(stimulus_id="t", time=1.0, is_idle=True))
    assert ws.occupancy == pytest.approx(2 * 6.0)


def test_idle_worker_occupancy_is_exactly_zero(state):
    add_worker(state, "w1", nthreads=3)
    submit(state, ["a", "b", "c"])
    finish(state, "a", duration=0.1)
    finish(state, "b", duration=0.7)
    finish(state, "c", duration=0.3)
    assert state.workers["w1"].occupancy == 0.0
    assert state.total_occupancy == 0.0


# -- idle and saturated ----------------------------------------------------------------


def test_worker_with_fewer_tasks_than_threads_is_idle(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, ["a"])
    assert "w1" in state.idle
    submit(state, ["b"])
    assert "w1" not in state.idle


def test_overloaded_worker_is_saturated_and_others_idle(state):
    for i in range(4):
        add_worker(state, f"w{i}")
    submit(
        state,
        [f"t{i}" for i in range(10)],
        restrictions={f"t{i}": ["w0"] for i in range(10)},
    )
    w0 = state.workers["w0"]
    # pending = 5.0 * 9 / 10 = 4.5 > 0.4 and > 1.9 * (5.0 / 4)
    assert w0 in state.saturated
    assert "w0" not in state.idle
    assert set(state.idle) == {"w1", "w2", "w3"}


def test_slightly_overloaded_worker_is_not_saturated(state):
    add_worker(state, "w0")
    add_worker(state, "w1")
    submit(state, ["a", "b"], restrictions={"a": ["w0"], "b": ["w0"]})
    # pending = 1.0 * 1 / 2 = 0.5 > 0.4 but not > 1.9 * 0.5
    assert not state.saturated
    assert "w0" not in state.idle


def test_paused_worker_is_neither_idle_nor_saturated(state):
    add_worker(state, "w0")
    add_worker(state, "w1")
    state.handle(ev.WorkerStatusChanged(stimulus_id="p", address="w0", status="paused"))
    assert "w0" not in state.idle
    assert state.workers["w0"] not in state.idle_task_count


# -- duration estimates ----------------------------------------------------------------


def test_duration_average_is_an_ema_with_alpha_half(state):
    add_worker(state, "w1", nthreads=3)
    submit(state, [("inc", i) for i in range(3)])
    tp = state.task_prefixes["inc"]
    finish(state, ("inc", 0), duration=1.0)
    assert tp.duration_average == 1.0
    finish(state, ("inc", 1), duration=3.0)
    assert tp.duration_average == 2.0
    finish(state, ("inc", 2), duration=5.0)
    assert tp.duration_average == 3.5


def test_only_compute_actions_feed_the_estimate(state):
    add_worker(state, "w1")
    submit(state, [("inc", 0)])
    state.handle(
        ev.TaskFinished(
            stimulus_id="f",
            key=("inc", 0),
            worker="w1",
            startstops=(("transfer", 0.0, 9.0), ("compute", 9.0, 10.0)),
        )
    )
    tp = state.task_prefixes["inc"]
    assert tp.duration_average == 1.0
    assert tp.all_durations == {"transfer": 9.0, "compute": 1.0}
    assert state.task_groups["inc"].duration == 1.0


def test_unknown_duration_uses_twice_the_longest_running_task(state):
    add_worker(state, "w1", nthreads=2)
    submit(state, [("slow", 0)])
    state.handle(
        ev.WorkerHeartbeat(stimulus_id="hb", address="w1", executing={("slow", 0): 4.0})
    )
    assert state.task_duration["slow"] == 8.0

    submit(state, [("slow", 1)])

    ws = state.workers["w1"]
    assert ws.processing[state.tasks[("slow", 1)]] == pytest.approx(8.0)


def test_unknown_duration_defaults_to_configured_guess():
    s = SchedulerState(validate=True, unknown_task_duration=2.5)
    add_worker(s, "w1")
    submit(s, ["a"])
    assert s.workers["w1"].occupancy == 2.5


def test_default_task_durations_seed_the_estimate(state):
    add_worker(state, "w1")
    submit(state, [("rechunk-split-0123abcd", 0)])
    assert state.task_duration["rechunk-split"] == pytest.approx(1e-6)
    assert state.workers["w1"].occupancy == pytest.approx(1e-6)


def test_tick_keeps_estimates_while_busy(state):
    add_worker(state, "w1")
    submit(state, ["a"])
    before = state.workers["w1"].occupancy
    tick(state, 5.0)
    assert state.workers["w1"].occupancy == before
