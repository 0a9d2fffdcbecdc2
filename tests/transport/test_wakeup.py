from __future__ import annotations

import os
import threading
from multiprocessing.connection import wait

import pytest

from localsched.transport.wakeup import Wakeup


@pytest.fixture
def wakeup():
    with Wakeup() as wakeup:
        yield wakeup


def test_a_fresh_wakeup_is_not_ready(wakeup: Wakeup) -> None:
    assert wait([wakeup], timeout=0) == []


def test_set_makes_wait_return_and_clear_resets_it(wakeup: Wakeup) -> None:
    wakeup.set()
    assert wait([wakeup], timeout=5) == [wakeup]
    assert wakeup.is_set
    wakeup.clear()
    assert not wakeup.is_set
    assert wait([wakeup], timeout=0) == []


def test_set_from_another_thread_wakes_a_blocked_wait(wakeup: Wakeup) -> None:
    waiting = threading.Event()

    def setter() -> None:
        waiting.wait(5)
        wakeup.set()

    thread = threading.Thread(target=setter)
    thread.start()
    waiting.set()
    ready = wait([wakeup], timeout=10)
    thread.join(10)
    assert ready == [wakeup]


def test_many_sets_coalesce_into_one_byte(wakeup: Wakeup) -> None:
    for _ in range(200_000):  # far beyond a 64 KiB pipe if each set wrote
        wakeup.set()
    assert os.read(wakeup.fileno(), 1024) == b"\0"


def test_set_does_not_block_when_the_pipe_is_full(wakeup: Wakeup) -> None:
    try:
        while True:
            os.write(wakeup._write_fd, b"\0" * 65536)
    except BlockingIOError:
        pass
    wakeup.set()  # would hang here with a blocking pipe
    assert wakeup.is_set
    wakeup.clear()
    assert wait([wakeup], timeout=0) == []


def test_set_after_clear_wakes_again(wakeup: Wakeup) -> None:
    wakeup.set()
    wakeup.clear()
    wakeup.set()
    assert wait([wakeup], timeout=5) == [wakeup]


def test_concurrent_setters_never_lose_a_wakeup(wakeup: Wakeup) -> None:
    # The loop's contract: append, then set; clear, then drain. Every item must
    # be seen by some turn of the loop, however the threads interleave.
    items: list[int] = []
    seen: list[int] = []
    per_thread, nthreads = 2000, 4

    def producer(base: int) -> None:
        for i in range(per_thread):
            items.append(base + i)
            wakeup.set()

    threads = [
        threading.Thread(target=producer, args=(n * per_thread,))
        for n in range(nthreads)
    ]
    for thread in threads:
        thread.start()
    while len(seen) < per_thread * nthreads:
        assert wait([wakeup], timeout=10) == [wakeup], "a wakeup was lost"
        wakeup.clear()
        seen.extend(items[len(seen) :])
    for thread in threads:
        thread.join(10)
    assert sorted(seen) == list(range(per_thread * nthreads))


def test_close_is_idempotent_and_set_after_close_is_a_no_op() -> None:
    wakeup = Wakeup()
    wakeup.close()
    wakeup.close()
    wakeup.set()
    wakeup.clear()
    assert "closed" in repr(wakeup)
