"""The worker's reply batching (``_Outbox``), over a real Pipe, in-process."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

import pytest

from localsched.transport.protocol import Goodbye, StealAnswer, decode_batch
from localsched.worker.main import _Outbox

DEADLINE = 10.0
LONG = 3600.0  # a deferral deadline no test reaches


def answer(i: int) -> StealAnswer:
    return StealAnswer(key=i, state=None)


@pytest.fixture
def pipe():
    ours, theirs = Pipe()
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.fixture
def start_sender():
    outboxes: list[tuple[_Outbox, threading.Thread]] = []

    def start(outbox: _Outbox) -> None:
        thread = threading.Thread(target=outbox.sender_loop, daemon=True)
        thread.start()
        outboxes.append((outbox, thread))

    yield start
    for outbox, thread in outboxes:
        outbox.close(None)
        thread.join(DEADLINE)
        assert not thread.is_alive()


def test_a_post_is_sent_at_once(pipe) -> None:
    ours, theirs = pipe
    _Outbox(theirs).post(answer(1))
    assert ours.poll(0)
    assert decode_batch(ours.recv_bytes()) == [answer(1)]


def test_deferred_replies_leave_with_the_next_plain_post(pipe) -> None:
    ours, theirs = pipe
    outbox = _Outbox(theirs, max_delay=LONG)
    for i in range(5):
        outbox.post(answer(i), may_defer=True)
    assert not ours.poll(0)
    outbox.post(answer(5))
    assert decode_batch(ours.recv_bytes()) == [answer(i) for i in range(6)]


def test_a_full_batch_is_sent_without_waiting(pipe) -> None:
    ours, theirs = pipe
    outbox = _Outbox(theirs, max_delay=LONG, max_batch=3)
    for i in range(3):
        outbox.post(answer(i), may_defer=True)
    assert ours.poll(0)
    assert decode_batch(ours.recv_bytes()) == [answer(0), answer(1), answer(2)]


def test_the_sender_thread_sends_deferred_replies_at_the_deadline(
    pipe, start_sender
) -> None:
    ours, theirs = pipe
    outbox = _Outbox(theirs, max_delay=0.01)
    start_sender(outbox)
    outbox.post(answer(1), may_defer=True)
    assert ours.poll(DEADLINE), "a deferred reply was never sent"
    assert decode_batch(ours.recv_bytes()) == [answer(1)]


def test_post_nowait_is_sent_by_the_sender_thread(pipe, start_sender) -> None:
    ours, theirs = pipe
    outbox = _Outbox(theirs)
    start_sender(outbox)
    outbox.post_nowait(answer(1))
    assert ours.poll(DEADLINE)
    assert decode_batch(ours.recv_bytes()) == [answer(1)]


def test_close_sends_pending_replies_then_the_goodbye_then_nothing(pipe) -> None:
    ours, theirs = pipe
    outbox = _Outbox(theirs, max_delay=LONG)
    outbox.post(answer(1), may_defer=True)
    outbox.close(Goodbye(reason="done"))
    outbox.post(answer(2))
    assert decode_batch(ours.recv_bytes()) == [answer(1), Goodbye(reason="done")]
    assert not ours.poll(0)


def test_posting_after_the_scheduler_left_does_not_raise(pipe) -> None:
    ours, theirs = pipe
    ours.close()
    outbox = _Outbox(theirs)
    outbox.post(answer(1))  # EPIPE: swallowed, the control thread sees EOF
    assert outbox.add(answer(2)) is False  # closed: nothing queued, no sender
    outbox.close(Goodbye(reason="late"))
