"""``FutureState`` makes its event and waiter list lazily: every order of
waiting, resolving and resetting still wakes each waiter exactly once."""

from __future__ import annotations

import threading

from localsched.future_state import FutureState

DEADLINE = 10.0


def test_event_made_after_resolution_is_set():
    state = FutureState("k")
    state.finish("int")
    assert state.done()
    assert state.event.is_set()
    assert state.status == "finished"


def test_event_made_before_resolution_is_set_by_it():
    state = FutureState("k")
    event = state.event
    assert not event.is_set()
    resolver = threading.Thread(target=state.cancel, args=("stop",))
    resolver.start()
    assert event.wait(DEADLINE)
    resolver.join(DEADLINE)
    assert state.status == "cancelled"
    assert state.event is event


def test_waiters_run_once_whenever_they_are_added():
    state = FutureState("k")
    calls: list[str] = []
    state.add_waiter(lambda s: calls.append("before"))
    removed = calls.append
    state.add_waiter(removed)
    state.remove_waiter(removed)
    state.set_error(ValueError("x"), "")
    state.add_waiter(lambda s: calls.append("after"))
    assert calls == ["before", "after"]
    state.finish(None)  # resolved again (a retry's result): no waiter left
    assert calls == ["before", "after"]


def test_a_lone_waiter_is_kept_without_a_list():
    # wait() on a million futures adds one waiter to each: no list per state.
    state = FutureState("k")
    calls: list[FutureState] = []
    state.add_waiter(calls.append)
    assert not isinstance(state._waiters, list)
    state.remove_waiter(lambda s: None)  # not the waiter: it stays
    state.remove_waiter(calls.append)
    state.finish("int")
    assert calls == []
    other = FutureState("j")
    other.add_waiter(calls.append)
    other.finish("int")
    assert calls == [other]


def test_reset_clears_the_event_and_done():
    state = FutureState("k")
    event = state.event
    state.finish("int")
    state.reset()
    assert not state.done()
    assert not event.is_set()
    assert state.status == "pending"
    state.reset()
    fresh = FutureState("j")
    fresh.reset("lost")  # before any event exists
    assert fresh.status == "lost"
    assert not fresh.event.is_set()


def test_many_threads_racing_a_resolution_all_wake():
    state = FutureState("k")
    woken: list[bool] = []
    lock = threading.Lock()

    def waiter() -> None:
        ok = state.event.wait(DEADLINE)
        with lock:
            woken.append(ok)

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for thread in threads:
        thread.start()
    state.finish("int")
    for thread in threads:
        thread.join(DEADLINE)
    assert woken == [True] * 8
