"""The memory monitor's policy (``localsched.runtime.memory.decide``) on crafted
readings, its thresholds and ``memory_limit`` parsing, and its rate-limited log."""

from __future__ import annotations

import logging
import sys

import pytest

from localsched.runtime.memory import (
    MemorySample,
    MemoryThresholds,
    RateLimitedLog,
    WorkerSample,
    decide,
    parse_memory_limit,
)
from localsched.units import format_bytes

MiB = 1 << 20
DEFAULT = MemoryThresholds()


def worker(address: str = "w1", *, limit: int = 100 * MiB, **kwargs) -> WorkerSample:
    kwargs.setdefault("unmanaged", 0)
    kwargs.setdefault("status", "running")
    return WorkerSample(address=address, limit=limit, **kwargs)


def sample(*workers: WorkerSample, managed: int = 0, spillable: int | None = None,
           time: float = 100.0, machine_limit: int = 0) -> MemorySample:  # fmt: skip
    return MemorySample(
        time=time,
        managed=managed,
        spillable=managed if spillable is None else spillable,
        workers=workers or (worker(),),
        machine_limit=machine_limit,
    )


# -- spilling ---------------------------------------------------------------------


def test_nothing_happens_below_the_thresholds():
    decision = decide(sample(worker(unmanaged=20 * MiB), managed=30 * MiB), DEFAULT)
    assert decision.spill == 0
    assert decision.pause == {}
    assert decision.resume == []
    assert decision.terminate == {}
    assert decision.notes == []


def test_managed_memory_above_target_spills_down_to_target():
    decision = decide(sample(managed=70 * MiB), DEFAULT)
    assert decision.spill == 10 * MiB
    assert decision.budget == 100 * MiB


def test_process_memory_above_spill_threshold_spills_down_to_target():
    # 50 managed is under target (60), but 50 + 25 unmanaged passes spill (70).
    decision = decide(sample(worker(unmanaged=25 * MiB), managed=50 * MiB), DEFAULT)
    assert decision.spill == 15 * MiB  # back to 60 in all


def test_spilling_is_bounded_by_what_can_spill_and_says_so_once_short():
    decision = decide(
        sample(worker(unmanaged=60 * MiB), managed=30 * MiB, spillable=5 * MiB),
        DEFAULT,
    )
    assert decision.spill == 5 * MiB
    [(level, _, _, message)] = [n for n in decision.notes if n[1] == "unmanaged"]
    assert level == logging.WARNING
    assert "unmanaged" in message
    assert "85.00 MiB" in message  # what is left after spilling


def test_spilling_off_spills_nothing():
    off = MemoryThresholds(target=None, spill=None)
    assert decide(sample(managed=95 * MiB), off).spill == 0


def test_without_target_spill_threshold_is_the_target():
    no_target = MemoryThresholds(target=None)
    assert decide(sample(managed=69 * MiB), no_target).spill == 0
    assert decide(sample(managed=75 * MiB), no_target).spill == 5 * MiB


def test_workers_without_a_limit_disable_the_monitor():
    decision = decide(
        sample(worker(limit=0, unmanaged=10**12), managed=10**12), DEFAULT
    )
    assert decision.spill == 0
    assert decision.terminate == {}


def test_budget_is_the_sum_of_limits_capped_by_the_machine():
    workers = (worker("a"), worker("b"))
    assert decide(sample(*workers), DEFAULT).budget == 200 * MiB
    capped = decide(
        sample(*workers, managed=90 * MiB, machine_limit=100 * MiB), DEFAULT
    )
    assert capped.budget == 100 * MiB
    assert capped.spill == 30 * MiB


# -- pause, resume ----------------------------------------------------------------


def test_worker_above_pause_threshold_is_paused_with_a_reason():
    decision = decide(sample(worker(unmanaged=85 * MiB)), DEFAULT)
    assert list(decision.pause) == ["w1"]
    assert "80%" in decision.pause["w1"]
    assert "85.00 MiB of its own memory" in decision.pause["w1"]
    assert decision.terminate == {}


def test_results_count_toward_the_budget_not_a_workers_limit():
    workers = (worker("w1", unmanaged=10 * MiB), worker("w2", unmanaged=10 * MiB))
    no_spill = MemoryThresholds(target=None, spill=None)
    # 140 of results in a 200 budget: more than either worker's limit of 100,
    # but they belong to no worker.
    assert decide(sample(*workers, managed=140 * MiB), no_spill).pause == {}
    # Past pause for the whole budget: every worker pauses, with one line.
    decision = decide(sample(*workers, managed=150 * MiB), no_spill)
    assert list(decision.pause) == ["w1", "w2"]
    [(_, kind, _, message)] = decision.notes
    assert kind == "pause"
    assert message.startswith("Workers w1, w2 paused: the workers use 170.00 MiB")


def test_paused_worker_resumes_below_pause_threshold():
    paused = worker(unmanaged=50 * MiB, status="paused", paused_since=90.0)
    assert decide(sample(paused), DEFAULT).resume == ["w1"]


def test_worker_paused_by_someone_else_is_not_resumed():
    paused = worker(unmanaged=50 * MiB, status="paused", paused_since=None)
    assert decide(sample(paused), DEFAULT).resume == []


def test_already_paused_worker_is_not_paused_again():
    paused = worker(unmanaged=85 * MiB, status="paused", paused_since=99.0)
    decision = decide(sample(paused), DEFAULT)
    assert decision.pause == {}
    assert decision.resume == []


def test_closing_worker_is_neither_paused_nor_resumed():
    closing = worker(unmanaged=85 * MiB, status="closing_gracefully")
    decision = decide(sample(closing), DEFAULT)
    assert decision.pause == {}
    assert decision.resume == []


# -- paused too long ---------------------------------------------------------------


def paused_for(seconds: float, **kwargs) -> WorkerSample:
    kwargs.setdefault("unmanaged", 85 * MiB)
    return worker(status="paused", paused_since=100.0 - seconds, **kwargs)


def test_idle_paused_worker_with_nothing_to_spill_is_restarted_after_the_timeout():
    decision = decide(sample(paused_for(31)), DEFAULT)
    assert list(decision.restart) == ["w1"]
    assert "paused for 31 s" in decision.restart["w1"]
    assert decision.terminate == {}


@pytest.mark.parametrize(
    ("seconds", "busy", "spillable"),
    [(29, False, 0), (31, True, 0)],
    ids=["before-timeout", "still-running-tasks"],
)
def test_paused_worker_is_not_restarted(seconds, busy, spillable):
    decision = decide(
        sample(paused_for(seconds, is_busy=busy), managed=spillable), DEFAULT
    )
    assert decision.restart == {}


def test_crowded_budget_restarts_the_idle_paused_worker_holding_the_most():
    workers = (
        worker("w1", unmanaged=75 * MiB, status="paused", paused_since=60.0),
        worker("w2", unmanaged=78 * MiB, status="paused", paused_since=60.0),
        worker("w3", unmanaged=99 * MiB, status="paused", paused_since=60.0,
               is_busy=True),
    )  # fmt: skip
    decision = decide(sample(*workers, machine_limit=300 * MiB), DEFAULT)
    assert list(decision.restart) == ["w2"]  # w3 is busy: its task may finish
    assert "held the most unmanaged memory (78.00 MiB)" in decision.restart["w2"]


def test_paused_workers_are_not_restarted_for_results_that_cannot_spill():
    # The budget is past pause because of results: a restart frees none.
    held = paused_for(31, unmanaged=10 * MiB)
    decision = decide(
        sample(held, managed=85 * MiB, spillable=0),
        MemoryThresholds(terminate=None),
    )
    assert decision.restart == {}
    assert decision.resume == []


# -- terminate ---------------------------------------------------------------------


def test_worker_above_terminate_threshold_is_terminated_with_a_cause():
    decision = decide(sample(worker(unmanaged=97 * MiB, is_busy=True)), DEFAULT)
    cause = decision.terminate["w1"]
    assert "95%" in cause
    assert "memory limit of 100.00 MiB" in cause
    assert decision.pause == {}


def test_worker_is_not_terminated_for_results_that_cannot_spill():
    # Its share of shared-memory results alone passes terminate: killing it
    # would free none of them (they live outside the workers).
    decision = decide(
        sample(worker(unmanaged=5 * MiB), managed=96 * MiB, spillable=0), DEFAULT
    )
    assert decision.terminate == {}
    assert list(decision.pause) == ["w1"]


def test_idle_worker_above_terminate_is_paused_not_terminated():
    idle = worker(unmanaged=97 * MiB, is_busy=False)
    decision = decide(sample(idle), DEFAULT)
    assert decision.terminate == {}
    assert list(decision.pause) == ["w1"]
    later = decide(sample(paused_for(31, unmanaged=97 * MiB)), DEFAULT)
    assert list(later.restart) == ["w1"]


def test_thread_workers_are_never_terminated():
    thread = worker(unmanaged=97 * MiB, restartable=False, is_busy=True)
    assert decide(sample(thread), DEFAULT).terminate == {}


def test_worker_over_a_capped_limit_is_terminated():
    # Limits add up to 300 but the machine has 100: each limit shrinks to 33.
    workers = tuple(
        worker(name, unmanaged=mib * MiB, is_busy=True)
        for name, mib in (("a", 30), ("b", 40), ("c", 10))
    )
    assert decide(sample(*workers), DEFAULT).terminate == {}
    decision = decide(sample(*workers, machine_limit=100 * MiB), DEFAULT)
    assert list(decision.terminate) == ["b"]
    assert "memory limit of 33.33 MiB" in decision.terminate["b"]


def test_machine_over_terminate_restarts_the_worker_with_most_unmanaged_memory():
    # Workers without a limit hold memory that no limit accounts for.
    workers = (
        worker("a", unmanaged=5 * MiB),
        worker("x", limit=0, unmanaged=62 * MiB),
        worker("y", limit=0, unmanaged=30 * MiB),
    )
    decision = decide(sample(*workers), MemoryThresholds(pause=None))
    assert list(decision.terminate) == ["x"]
    assert "most unmanaged memory (62.00 MiB)" in decision.terminate["x"]


def test_terminate_off_never_kills():
    off = MemoryThresholds(terminate=None)
    decision = decide(sample(worker(unmanaged=200 * MiB, is_busy=True)), off)
    assert decision.terminate == {}
    assert list(decision.pause) == ["w1"]


# -- thresholds and memory_limit --------------------------------------------------


def test_thresholds_default_to_dask_values():
    thresholds = MemoryThresholds.resolve()
    assert (thresholds.target, thresholds.spill, thresholds.pause) == (0.6, 0.7, 0.8)
    assert thresholds.terminate == 0.95


def test_thresholds_from_arguments_false_turns_off():
    thresholds = MemoryThresholds.resolve(target=0.4, pause=False, pause_timeout=2)
    assert thresholds.target == 0.4
    assert thresholds.pause is None
    assert thresholds.pause_timeout == 2


def test_thresholds_follow_dask_config_when_dask_is_imported():
    dask_config = pytest.importorskip("dask.config")
    assert "dask.config" in sys.modules
    with dask_config.set(
        {
            "distributed.worker.memory.spill": 0.5,
            "distributed.worker.memory.pause": False,
        }
    ):
        thresholds = MemoryThresholds.resolve(target=0.3)
    assert (thresholds.target, thresholds.spill, thresholds.pause) == (0.3, 0.5, None)


@pytest.mark.parametrize("bad", [0, 1.5, -0.1])
def test_thresholds_outside_zero_one_are_refused(bad):
    with pytest.raises(ValueError, match="fraction"):
        MemoryThresholds.resolve(spill=bad)


def test_unknown_threshold_is_refused():
    with pytest.raises(TypeError, match="unknown"):
        MemoryThresholds.resolve(spil=0.5)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, 0),
        (0, 0),
        ("0", 0),
        ("auto", 250),  # 1000 * 1 thread / 4 cores
        (0.5, 500),
        ("0.5", 500),
        (300, 300),
        ("300 B", 300),
        ("0.5 KiB", 512),
        ("1kB", 1000),
    ],
)
def test_memory_limit_parses_as_dask_does(limit, expected):
    assert parse_memory_limit(limit, 1, 4, system_limit=1000) == expected


def test_memory_limit_auto_is_at_most_the_machine():
    assert parse_memory_limit("auto", 8, 4, system_limit=1000) == 1000


def test_memory_limit_above_the_machine_is_capped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="localsched.runtime.memory"):
        assert parse_memory_limit("2kB", 1, 4, system_limit=1000) == 1000
    assert "Ignoring memory_limit='2kB'" in caplog.text


def test_memory_limit_refuses_nonsense():
    with pytest.raises(ValueError, match="as a byte unit"):
        parse_memory_limit("lots", 1, 4, system_limit=1000)


def test_memory_messages_format_bytes_as_dask():
    assert format_bytes(300 * MiB) == "300.00 MiB"
    assert format_bytes(1536) == "1.50 kiB"
    assert format_bytes(12) == "12 B"


# -- rate-limited log --------------------------------------------------------------


def test_log_lines_are_rate_limited_per_kind_and_subject_with_counts(caplog):
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("localsched.runtime.memory"), 5.0, lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="localsched.runtime.memory"):
        for step in range(100):  # a worker swinging around a threshold
            now[0] = step * 0.1
            log(logging.WARNING, "pause", "w1", "w1 paused")
        log(logging.WARNING, "pause", "w2", "w2 paused")  # another worker: logged
        now[0] = 10.0
        assert log(logging.WARNING, "pause", "w1", "w1 paused")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4  # at 0 s, at 5 s, w2, at 10 s
    assert messages[0] == "w1 paused"
    assert "(49 more like this in the last 5 s were not logged)" in messages[1]
    assert messages[2] == "w2 paused"
    assert "(49 more like this" in messages[3]
