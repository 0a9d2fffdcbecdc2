"""Adaptive sizing (``adaptive_target``, ``workers_to_close``) and work stealing."""

from __future__ import annotations

import pytest

from localsched.scheduler import events as ev
from localsched.scheduler import policies, stealing
from localsched.scheduler.commands import (
    CloseWorker,
    ComputeTask,
    FreeKeys,
    StealRequest,
)
from localsched.scheduler.state import SchedulerState
from tests.scheduler.factories import (
    add_worker,
    computed,
    finish,
    of_type,
    remove_worker,
    scatter,
    submit,
    tick,
)


def make_state(**kwargs) -> SchedulerState:
    return SchedulerState(validate=True, transition_counter_max=100_000, **kwargs)


def restricted(keys, worker):
    return {k: [worker] for k in keys}


# -- adaptive_target -------------------------------------------------------------------


def test_adaptive_target_is_zero_when_nothing_happens(state):
    assert policies.adaptive_target(state) == 0


def test_adaptive_target_asks_for_a_worker_when_work_waits_and_none_exist(state):
    submit(state, [("x", i) for i in range(3)])
    assert len(state.queued) == 3
    # 1.5 s of work fits in 5 s: one worker
    assert policies.adaptive_target(state) == 1


def test_adaptive_target_sizes_queued_work_by_target_duration(state):
    submit(state, [("x", i) for i in range(100)])
    # 100 * 0.5 s / 5 s = 10 threads
    assert policies.adaptive_target(state) == 10
    assert policies.adaptive_target(state, target_duration=1.0) == 50


def test_adaptive_target_extrapolates_beyond_a_sample_of_100_ready_tasks(state):
    submit(state, [("x", i) for i in range(300)])
    # 100 sampled * 0.5 s * 300 / 100 = 150 s -> 30
    assert policies.adaptive_target(state) == 30


def test_adaptive_target_counts_unrunnable_tasks(state):
    submit(
        state,
        [f"t{i}" for i in range(20)],
        restrictions=restricted([f"t{i}" for i in range(20)], "gpu-box"),
    )
    assert len(state.unrunnable) == 20
    assert policies.adaptive_target(state, target_duration=1.0) == 10


def test_adaptive_target_caps_cpu_at_the_number_of_tasks():
    s = make_state(default_task_durations={"slow": 100.0})
    add_worker(s, "w1", nthreads=1)
    submit(s, [("slow", 0), ("slow", 1)])
    assert s.total_occupancy == 200.0
    # 200 s / 5 s = 40 threads, but only 2 tasks exist
    assert policies.adaptive_target(s) == 2


def test_adaptive_target_converts_threads_to_workers():
    s = make_state(default_task_durations={"t": 5.0})
    add_worker(s, "w1", nthreads=4)
    add_worker(s, "w2", nthreads=4)
    keys = [("t", i) for i in range(16)]
    submit(s, keys, restrictions={k: ["w1" if k[1] % 2 else "w2"] for k in keys})
    assert s.total_occupancy == 80.0
    # 80 s / 5 s = 16 threads = 16 / 8 * 2 workers = 4 workers
    assert policies.adaptive_target(s) == 4


def test_adaptive_target_doubles_workers_when_memory_is_over_60_percent(state):
    add_worker(state, "w1", memory_limit=1000)
    add_worker(state, "w2", memory_limit=1000)
    scatter(state, {"d": "w1"}, nbytes={"d": 1300})
    assert policies.adaptive_target(state) == 4


def test_adaptive_target_ignores_memory_below_60_percent(state):
    add_worker(state, "w1", memory_limit=1000)
    add_worker(state, "w2", memory_limit=1000)
    scatter(state, {"d": "w1"}, nbytes={"d": 1100})
    # scale down as far as workers_to_close allows: limit 1000 >= 2 * 1100? no
    assert policies.adaptive_target(state) == 2


def test_adaptive_target_scales_down_only_as_far_as_safe(state):
    for i in range(4):
        add_worker(state, f"w{i}", memory_limit=1000)
    scatter(state, {"d": "w0"}, nbytes={"d": 900})
    # keep 2 * 900 bytes of limit: w3, w2 go (limit 2000), w1 would leave 1000 < 1800
    assert policies.workers_to_close(state) == ["w3", "w2"]
    assert policies.adaptive_target(state) == 2


def test_adaptive_target_keeps_enough_workers_for_running_work():
    s = make_state(default_task_durations={"t": 5.0})
    add_worker(s, "w1", nthreads=1)
    add_worker(s, "w2", nthreads=1)
    add_worker(s, "w3", nthreads=1)
    submit(s, ["t-a", "t-b"], restrictions={"t-a": ["w1"], "t-b": ["w2"]})
    # 10 s / 5 s = 2 workers; the idle w3 may go
    assert policies.adaptive_target(s) == 2


# -- workers_to_close ------------------------------------------------------------------


def test_workers_to_close_idle_workers_without_data(state):
    for i in range(3):
        add_worker(state, f"w{i}")
    assert sorted(policies.workers_to_close(state)) == ["w0", "w1", "w2"]


def test_workers_to_close_nothing_when_every_worker_is_busy(state):
    add_worker(state, "w0")
    add_worker(state, "w1")
    submit(state, ["a", "b"], restrictions={"a": ["w0"], "b": ["w1"]})
    assert policies.workers_to_close(state) == []
    assert policies.workers_to_close(state, n=1) != []


def test_workers_to_close_busy_workers_only_when_n_asks(state):
    add_worker(state, "w0")
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["a", "b"], restrictions={"a": ["w0"], "b": ["w1"]})
    assert policies.workers_to_close(state) == ["w2"]
    closed = policies.workers_to_close(state, n=2)
    assert closed[0] == "w2"
    assert len(closed) == 2


def test_workers_to_close_prefers_idle_workers_holding_fewer_bytes(state):
    for i in range(3):
        add_worker(state, f"w{i}", memory_limit=10_000)
    scatter(state, {"big": "w0"}, nbytes={"big": 500})
    scatter(state, {"small": "w1"}, nbytes={"small": 100})
    assert policies.workers_to_close(state, n=2) == ["w2", "w1"]


def test_workers_to_close_keeps_memory_ratio_times_stored_bytes(state):
    for i in range(3):
        add_worker(state, f"w{i}", memory_limit=100)
    scatter(state, {"d": "w0"}, nbytes={"d": 60})
    # closing w2 leaves 200 >= 2 * 60; closing w1 too would leave 100 < 120
    assert policies.workers_to_close(state) == ["w2"]
    assert policies.workers_to_close(state, memory_ratio=1) == ["w2", "w1"]
    assert policies.workers_to_close(state, memory_ratio=4) == []


def test_workers_to_close_respects_minimum(state):
    for i in range(4):
        add_worker(state, f"w{i}")
    assert len(policies.workers_to_close(state, minimum=3)) == 1
    assert policies.workers_to_close(state, minimum=4) == []


def test_workers_to_close_down_to_target(state):
    for i in range(4):
        add_worker(state, f"w{i}")
    assert len(policies.workers_to_close(state, target=1)) == 3
    assert policies.workers_to_close(state, target=4) == []
    assert policies.workers_to_close(state, target=9) == []
    assert len(policies.workers_to_close(state, n=1)) == 1


def test_workers_to_close_groups_by_key_and_closes_whole_groups(state):
    add_worker(state, "a1", host="hostA")
    add_worker(state, "a2", host="hostA")
    add_worker(state, "b1", host="hostB")
    submit(state, ["t"], restrictions={"t": ["b1"]})

    closed = policies.workers_to_close(state, key=lambda ws: ws.host)

    assert sorted(closed) == ["a1", "a2"]


def test_workers_to_close_group_would_break_minimum_is_kept(state):
    add_worker(state, "a1", host="hostA")
    add_worker(state, "a2", host="hostA")
    add_worker(state, "b1", host="hostB")
    closed = policies.workers_to_close(state, key=lambda ws: ws.host, minimum=2)
    assert closed == ["b1"]


def test_workers_to_close_returns_the_requested_attribute(state):
    add_worker(state, "w0", name="alice")
    add_worker(state, "w1", name="bob")
    submit(state, ["t"], restrictions={"t": ["w0"]})
    assert policies.workers_to_close(state, attribute="name") == ["bob"]


def test_workers_to_close_never_closes_a_worker_with_seceded_tasks(state):
    add_worker(state, "w0")
    add_worker(state, "w1")
    submit(state, ["t"], restrictions={"t": ["w0"]})
    state.handle(ev.TaskSeceded(stimulus_id="s", key="t", worker="w0"))
    assert policies.workers_to_close(state, n=2) == ["w1"]


def test_workers_to_close_lets_hooks_filter_candidates(state):
    class Hooks:
        def notify(self, hook, **kwargs):
            pass

        def filter_downscaling(self, workers):
            return [ws for ws in workers if ws.address != "w1"]

    state.hooks = Hooks()
    for i in range(3):
        add_worker(state, f"w{i}")
    assert sorted(policies.workers_to_close(state)) == ["w0", "w2"]


def test_workers_to_close_takes_idle_workers_before_busy_ones_whatever_bytes(state):
    for i in range(3):
        add_worker(state, f"w{i}", memory_limit=10_000)
    scatter(state, {"big": "w0"}, nbytes={"big": 5000})
    submit(state, ["t"], restrictions={"t": ["w1"]})
    # w1 holds nothing but is busy: the idle w0 (5000 bytes) goes before it
    assert policies.workers_to_close(state, n=2) == ["w2", "w0"]
    assert policies.workers_to_close(state, n=3) == ["w2", "w0", "w1"]


def test_workers_to_close_target_counts_workers_not_groups(state):
    for name in ("a1", "a2"):
        add_worker(state, name, host="hostA")
    for name in ("b1", "b2", "b3"):
        add_worker(state, name, host="hostB")
    scatter(state, {"d": "b1"}, nbytes={"d": 10})
    # down to 3 workers: hostA (2 workers, no data) closes whole; hostB would
    # overshoot the target
    closed = policies.workers_to_close(state, target=3, key=lambda ws: ws.host)
    assert sorted(closed) == ["a1", "a2"]
    assert policies.workers_to_close(state, target=1, key=lambda ws: ws.host) == [
        "a1",
        "a2",
    ]
    assert len(policies.workers_to_close(state, target=0, key=lambda ws: ws.host)) == 5


def test_workers_to_close_minimum_with_target_keeps_the_minimum(state):
    for i in range(4):
        add_worker(state, f"w{i}")
    assert len(policies.workers_to_close(state, target=0, minimum=2)) == 2
    assert policies.workers_to_close(state, target=0, minimum=2, attribute="name") == [
        state.workers[a].name
        for a in policies.workers_to_close(state, target=0, minimum=2)
    ]


# -- graceful retirement ---------------------------------------------------------------


def test_retiring_worker_hands_unstarted_tasks_to_staying_workers(state):
    keys = overloaded_w1(state, n=4)
    w1, w2 = state.workers["w1"], state.workers["w2"]

    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))

    requests = of_type(cmds, StealRequest)
    assert sorted(r.key for r in requests) == sorted(keys)
    assert all(r.worker == "w1" and r.thief == "w2" for r in requests)
    executing, *queued = [r.key for r in requests]
    state.handle(
        ev.StealResponse(
            stimulus_id="r0", key=executing, worker="w1", state="executing"
        ),
        *(
            ev.StealResponse(stimulus_id=f"r{k}", key=k, worker="w1", state="ready")
            for k in queued
        ),
    )
    assert all(state.tasks[k].processing_on is w2 for k in queued)
    assert state.tasks[executing].processing_on is w1
    assert w1.status == "closing_gracefully"

    cmds = finish(state, executing, "w1", shared=True)

    # its one task done, its result in the shared store: w1 retires, result kept
    assert CloseWorker.match(worker="w1", reason="retired") in cmds
    assert "w1" not in state.workers
    assert state.tasks[executing].state == "memory"
    assert w2.status == "running"


def test_retiring_the_only_worker_keeps_its_queue(state):
    keys = [f"t{i}" for i in range(3)]
    add_worker(state, "w1")
    submit(state, keys)

    cmds = state.handle(ev.RetireWorkers(stimulus_id="ret", workers=["w1"]))

    assert of_type(cmds, StealRequest) == []
    assert all(state.tasks[k].processing_on is state.workers["w1"] for k in keys)


# -- stealing --------------------------------------------------------------------------


def overloaded_w1(s: SchedulerState, n: int = 10) -> list[str]:
    """w1 runs ``n`` independent tasks; then an empty w2 joins."""
    add_worker(s, "w1")
    keys = [f"t{i}" for i in range(n)]
    submit(s, keys)
    assert all(s.tasks[k].processing_on is s.workers["w1"] for k in keys)
    add_worker(s, "w2")
    return keys


def test_balance_asks_the_busy_worker_to_hand_tasks_to_the_idle_one(state):
    overloaded_w1(state)

    cmds = tick(state, 1.0)

    requests = of_type(cmds, StealRequest)
    assert requests
    assert all(r.worker == "w1" and r.thief == "w2" for r in requests)
    assert len(state.stealing.in_flight) == len(requests)
    w1, w2 = state.workers["w1"], state.workers["w2"]
    moved = sum(w1.processing[state.tasks[r.key]] for r in requests)
    assert state.stealing.in_flight_occupancy[w2] == pytest.approx(moved)
    assert state.stealing.in_flight_occupancy[w1] == pytest.approx(-moved)
    # the task stays on the victim until it answers
    assert all(state.tasks[r.key].processing_on is w1 for r in requests)


def test_balance_does_not_ask_twice_for_a_task_in_flight(state):
    overloaded_w1(state)
    first = {r.key for r in of_type(tick(state, 1.0), StealRequest)}
    second = {r.key for r in of_type(tick(state, 2.0), StealRequest)}
    assert not first & second


def test_balance_prefers_saturated_victims(state):
    for i in range(4):
        add_worker(state, f"w{i}")
    keys = [f"t{i}" for i in range(10)]
    submit(state, keys, restrictions=restricted(keys, "w0"), loose_restrictions=keys)
    assert state.saturated == {state.workers["w0"]}

    cmds = tick(state, 1.0)

    requests = of_type(cmds, StealRequest)
    assert requests
    assert {r.worker for r in requests} == {"w0"}
    assert {r.thief for r in requests} <= {"w1", "w2", "w3"}


def test_nothing_to_steal_when_every_worker_is_idle(state):
    add_worker(state, "w1", nthreads=4)
    add_worker(state, "w2", nthreads=4)
    submit(state, ["a", "b"])
    assert stealing.balance(state, "b") == []


def test_strictly_restricted_tasks_are_never_stolen(state):
    add_worker(state, "w1")
    keys = [f"t{i}" for i in range(10)]
    submit(state, keys, restrictions=restricted(keys, "w1"))
    add_worker(state, "w2")
    assert state.stealing.stealable.get(state.workers["w1"]) is None
    assert of_type(tick(state, 1.0), StealRequest) == []


def test_stealing_can_be_disabled():
    s = make_state(work_stealing=False)
    overloaded_w1(s)
    assert of_type(tick(s, 1.0), StealRequest) == []
    assert s.stealing.stealable == {}


def test_steal_levels_follow_transfer_to_compute_ratio(state):
    add_worker(state, "w1")
    scatter(state, {"d": "w1"}, nbytes={"d": 10**8})
    submit(state, {"b": ["d"]}, keys=["b"])
    submit(state, ["free"])
    # no dependencies: level 0; 1 s transfer + 0.1 s latency vs 0.5 s compute:
    # round(log2(2.2) + 6) = 7
    assert stealing.steal_time_ratio(state, state.tasks["free"]) == 0
    assert stealing.steal_time_ratio(state, state.tasks["b"]) == 7


def test_fast_prefixes_are_never_stolen(state):
    add_worker(state, "w1")
    submit(state, [("rechunk-split-0123abcd", 0)])
    assert (
        stealing.steal_time_ratio(state, state.tasks[("rechunk-split-0123abcd", 0)])
        is None
    )


def test_tasks_too_costly_to_move_are_never_stolen():
    s = make_state(default_task_durations={"quick": 0.002})
    add_worker(s, "w1")
    scatter(s, {"d": "w1"}, nbytes={"d": 10**10})
    submit(s, {("quick", 0): ["d"]}, keys=[("quick", 0)])
    assert stealing.steal_time_ratio(s, s.tasks[("quick", 0)]) is None


def _one_request(s: SchedulerState) -> StealRequest:
    requests = of_type(tick(s, 1.0), StealRequest)
    assert requests
    return requests[0]


def test_ready_steal_response_moves_the_task_to_the_thief(state):
    overloaded_w1(state)
    request = _one_request(state)
    ts = state.tasks[request.key]
    old_run = ts.run_id

    cmds = state.handle(
        ev.StealResponse(
            stimulus_id=request.stimulus_id, key=request.key, worker="w1", state="ready"
        )
    )

    assert cmds == [
        FreeKeys.match(worker="w1", keys=(request.key,)),
        ComputeTask.match(worker="w2", key=request.key),
    ]
    assert ts.processing_on is state.workers["w2"]
    assert ts.run_id > old_run
    assert ts not in state.stealing.in_flight
    assert ("processing", "processing") in [
        (t.start, t.finish) for t in state.story(request.key)
    ]
    # the old run's result is now stale
    assert finish(state, request.key, worker="w1", run_id=old_run) == [
        FreeKeys.match(worker="w1", keys=(request.key,))
    ]


def test_executing_steal_response_rejects_the_steal(state):
    overloaded_w1(state)
    request = _one_request(state)
    ts = state.tasks[request.key]

    cmds = state.handle(
        ev.StealResponse(
            stimulus_id="resp", key=request.key, worker="w1", state="executing"
        )
    )

    assert cmds == []
    assert ts.processing_on is state.workers["w1"]
    assert ts not in state.stealing.in_flight


def test_unknown_task_steal_response_reschedules_it(state):
    overloaded_w1(state)
    request = _one_request(state)

    cmds = state.handle(
        ev.StealResponse(stimulus_id="resp", key=request.key, worker="w1", state=None)
    )

    assert FreeKeys.match(worker="w1", keys=(request.key,)) in cmds
    assert computed(cmds) == {request.key: "w2"}
    assert state.tasks[request.key] not in state.stealing.in_flight


def test_all_answers_restore_in_flight_occupancy(state):
    overloaded_w1(state)
    requests = of_type(tick(state, 1.0), StealRequest)
    answers = ["ready", "executing", None, "memory", "waiting"]
    for request, answer in zip(requests, answers, strict=False):
        state.handle(
            ev.StealResponse(
                stimulus_id="resp", key=request.key, worker="w1", state=answer
            )
        )
    for request in requests[len(answers) :]:
        finish(state, request.key)
    assert state.stealing.in_flight == {}
    assert state.stealing.in_flight_occupancy == {}


def test_steal_response_from_another_worker_is_ignored(state):
    overloaded_w1(state)
    request = _one_request(state)
    cmds = state.handle(
        ev.StealResponse(
            stimulus_id="resp", key=request.key, worker="w2", state="ready"
        )
    )
    assert cmds == []
    assert state.tasks[request.key] in state.stealing.in_flight


def test_steal_is_abandoned_when_the_task_finishes_first(state):
    overloaded_w1(state)
    request = _one_request(state)
    finish(state, request.key)
    assert state.tasks[request.key] not in state.stealing.in_flight

    cmds = state.handle(
        ev.StealResponse(
            stimulus_id="resp", key=request.key, worker="w1", state="ready"
        )
    )

    assert cmds == []
    assert state.tasks[request.key].state == "memory"


def test_steal_to_a_thief_that_left_keeps_the_task(state):
    overloaded_w1(state)
    requests = of_type(tick(state, 1.0), StealRequest)
    remove_worker(state, "w2", expected=True)

    for request in requests:
        cmds = state.handle(
            ev.StealResponse(
                stimulus_id="resp", key=request.key, worker="w1", state="ready"
            )
        )
        assert cmds == []
        assert state.tasks[request.key].processing_on is state.workers["w1"]
    assert state.stealing.in_flight == {}
    assert state.stealing.in_flight_occupancy == {}
