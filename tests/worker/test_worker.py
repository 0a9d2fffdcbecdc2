"""The worker's threads and message handling, in-process over a real Pipe.

``Worker.serve`` runs in a thread here; only ``run_worker`` (tested in
test_main.py with a real process) touches process-wide settings.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from multiprocessing import Pipe
from typing import TYPE_CHECKING

import pytest

from localsched.transport.protocol import (
    ForgetKeys,
    Goodbye,
    GrantSegments,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    RunTask,
    SetPaused,
    Shutdown,
    StealAnswer,
    StealQuery,
    TaskDone,
    TaskFailed,
    TaskRef,
    decode_batch,
    dumps_function,
    encode_batch,
)
from localsched.transport.shm import INLINE_THRESHOLD, BlobRef, BlobStore, load
from localsched.worker.main import Worker

if TYPE_CHECKING:
    from collections.abc import Callable

DEADLINE = 10.0  # seconds; every wait in these tests is bounded by it

# Gates let a test hold a task in its thread: it reports that it started, then
# waits until the test opens its gate. Module-level, so the worker's pickled
# function finds the same objects (cloudpickle pickles these by reference).
STARTED: dict[str, threading.Event] = {}
GATES: dict[str, threading.Event] = {}


def wait_gate(name: str) -> str:
    STARTED[name].set()
    if not GATES[name].wait(DEADLINE):
        raise TimeoutError(f"gate {name} never opened")
    return name


def big_bytes(n: int) -> bytes:
    return bytes(n)


def add(a: int, b: int) -> int:
    return a + b


class Harness:
    """A Worker serving in a thread; the test plays the scheduler."""

    def __init__(self, nthreads: int, writer=None, resources=None) -> None:
        self.conn, child = Pipe()
        self.worker = Worker(child, nthreads, writer, resources)
        self.outcome: dict[str, object] = {}
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.tokens: set[str] = set()
        self.run_ids = iter(range(1, 10**6))
        self.unread: list[Message] = []
        self.replies: dict[object, TaskDone | TaskFailed] = {}

    def _serve(self) -> None:
        try:
            self.outcome["reason"] = self.worker.serve()
        except BaseException as exc:
            self.outcome["error"] = exc

    def send(self, *messages: Message) -> None:
        self.conn.send_bytes(encode_batch(messages))

    def run(
        self, key, function: Callable, *args, priority=(0,), deps=None, needs=None
    ) -> RunTask:
        token, data = dumps_function(function)
        message = RunTask(
            key=key,
            run_id=next(self.run_ids),
            function_token=token,
            function=None if token in self.tokens else data,
            args=pickle.dumps((args, {})),
            dependencies=deps or {},
            priority=priority,
            resource_restrictions=needs,
        )
        self.tokens.add(token)
        return message

    def recv(self) -> list[Message]:
        """The next batch, without Heartbeats (sent while tasks run)."""
        while True:
            assert self.conn.poll(DEADLINE), "the worker sent nothing in time"
            batch = decode_batch(self.conn.recv_bytes())
            batch = [m for m in batch if not isinstance(m, Heartbeat)]
            if batch:
                return batch

    def recv_until(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Messages up to and including the first that matches ``predicate``; the
        rest of its batch stays for the next call. Task replies are also kept
        in ``replies``, as replies from several threads come in any order."""
        received: list[Message] = []
        while True:
            if not self.unread:
                self.unread.extend(self.recv())
            message = self.unread.pop(0)
            received.append(message)
            if isinstance(message, TaskDone | TaskFailed):
                self.replies[message.key] = message
            if predicate(message):
                return received

    def reply_to(self, key) -> TaskDone | TaskFailed:
        if key not in self.replies:
            self.recv_until(
                lambda m: isinstance(m, TaskDone | TaskFailed) and m.key == key
            )
        return self.replies[key]

    def steal(self, key) -> str | None:
        self.send(StealQuery(key=key))
        messages = self.recv_until(
            lambda m: isinstance(m, StealAnswer) and m.key == key
        )
        return messages[-1].state

    def join(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "Worker.serve did not return"


@pytest.fixture
def gates():
    def make(*names: str) -> None:
        for name in names:
            STARTED[name] = threading.Event()
            GATES[name] = threading.Event()

    yield make
    for gate in GATES.values():
        gate.set()
    STARTED.clear()
    GATES.clear()


@pytest.fixture
def harness_factory():
    harnesses: list[Harness] = []

    def make(nthreads: int = 1, writer=None, resources=None) -> Harness:
        harness = Harness(nthreads, writer, resources)
        harnesses.append(harness)
        hello = harness.recv()
        assert hello == [Hello(pid=os.getpid(), nthreads=nthreads)]
        return harness

    yield make
    for harness in harnesses:
        if harness.thread.is_alive():
            with contextlib.suppress(OSError):  # closed by the test
                harness.send(Shutdown(reason="teardown"))
        harness.join()
        harness.conn.close()
        harness.worker.conn.close()


def test_a_task_runs_and_its_result_comes_back_inline(harness_factory) -> None:
    harness = harness_factory()
    harness.send(harness.run("add-1", add, 1, 2))
    reply = harness.reply_to("add-1")
    assert isinstance(reply, TaskDone)
    assert (reply.run_id, reply.type) == (1, "int")
    assert load(reply.payload) == 3


def test_a_function_is_sent_once_and_cached_by_token(harness_factory) -> None:
    harness = harness_factory()
    first, second = harness.run("a", add, 1, 1), harness.run("b", add, 2, 2)
    assert first.function is not None
    assert second.function is None
    harness.send(first, second)
    assert load(harness.reply_to("b").payload) == 4


def test_an_unknown_function_token_fails_the_task(harness_factory) -> None:
    harness = harness_factory()
    harness.send(
        RunTask(key="x", run_id=1, function_token="never-sent", args=pickle.dumps(()))
    )
    reply = harness.reply_to("x")
    assert isinstance(reply, TaskFailed)
    assert isinstance(pickle.loads(reply.exception), LookupError)
    assert "never-sent" in reply.exception_text


def test_undecodable_arguments_fail_the_task(harness_factory) -> None:
    harness = harness_factory()
    message = harness.run("x", add, 1, 2)
    harness.send(
        RunTask(
            key="x",
            run_id=1,
            function_token=message.function_token,
            function=message.function,
            args=b"garbage",
        )
    )
    reply = harness.reply_to("x")
    assert isinstance(reply, TaskFailed)
    assert isinstance(pickle.loads(reply.exception), pickle.UnpicklingError)


def test_dependencies_reach_the_function(harness_factory) -> None:
    harness = harness_factory()
    deps = {"x": pickle.dumps(40), "y": pickle.dumps(2)}
    harness.send(harness.run("sum", add, TaskRef("x"), TaskRef("y"), deps=deps))
    assert load(harness.reply_to("sum").payload) == 42


def test_queued_tasks_run_in_priority_order(harness_factory, gates) -> None:
    gates("block")
    harness = harness_factory(nthreads=1)
    harness.send(harness.run("block", wait_gate, "block", priority=(0,)))
    assert STARTED["block"].wait(DEADLINE)
    harness.send(
        harness.run("low", add, 0, 3, priority=(3,)),
        harness.run("high", add, 0, 1, priority=(1,)),
        harness.run("mid", add, 0, 2, priority=(2,)),
    )
    GATES["block"].set()
    messages = harness.recv_until(lambda m: getattr(m, "key", None) == "low")
    done = [m.key for m in messages if isinstance(m, TaskDone)]
    assert done == ["block", "high", "mid", "low"]


def test_a_paused_worker_starts_no_queued_task_until_resumed(
    harness_factory, gates
) -> None:
    gates("running")
    harness = harness_factory(nthreads=1)
    harness.send(
        harness.run("running", wait_gate, "running", priority=(0,)),
        harness.run("queued", add, 1, 2, priority=(1,)),
    )
    assert STARTED["running"].wait(DEADLINE)
    harness.send(SetPaused(paused=True))
    # The control thread answers in order: once this comes back, it has paused.
    assert harness.steal("never-seen") is None
    GATES["running"].set()  # the running task ends: pausing never stops one
    assert isinstance(harness.reply_to("running"), TaskDone)
    # For a while, nothing but heartbeats: the queued task does not start.
    assert "queued" not in harness.replies
    assert not [m for m in harness.unread if getattr(m, "key", None) == "queued"]
    deadline = time.monotonic() + 0.3
    while harness.conn.poll(max(0.0, deadline - time.monotonic())):
        batch = decode_batch(harness.conn.recv_bytes())
        assert all(isinstance(m, Heartbeat) for m in batch), batch
    harness.send(SetPaused(paused=False))
    assert isinstance(harness.reply_to("queued"), TaskDone)


def test_steal_answers_follow_the_task_through_its_life(harness_factory, gates) -> None:
    gates("running")
    harness = harness_factory(nthreads=1)
    harness.send(harness.run("running", wait_gate, "running"))
    assert STARTED["running"].wait(DEADLINE)
    assert harness.steal("running") == "executing"
    GATES["running"].set()
    assert isinstance(harness.reply_to("running"), TaskDone)
    assert harness.steal("running") == "memory"
    assert harness.steal("never-seen") is None


def test_a_stolen_task_is_dropped_and_never_runs(harness_factory, gates) -> None:
    gates("block")
    harness = harness_factory(nthreads=1)
    harness.send(
        harness.run("block", wait_gate, "block", priority=(0,)),
        harness.run("victim", add, 1, 1, priority=(1,)),
    )
    assert STARTED["block"].wait(DEADLINE)
    assert harness.steal("victim") == "ready"
    harness.send(harness.run("after", add, 2, 2, priority=(2,)))
    GATES["block"].set()
    messages = harness.recv_until(lambda m: getattr(m, "key", None) == "after")
    assert "victim" not in [m.key for m in messages if isinstance(m, TaskDone)]
    assert harness.steal("victim") is None


def test_forgetting_drops_queued_tasks_and_discards_running_results(
    harness_factory, gates
) -> None:
    gates("running")
    with BlobStore() as store:
        harness = harness_factory(nthreads=1, writer=store.writer())
        harness.send(
            harness.run("running", wait_gate, "running", priority=(0,)),
            harness.run("queued", add, 1, 1, priority=(1,)),
        )
        assert STARTED["running"].wait(DEADLINE)
        harness.send(ForgetKeys(keys=("running", "queued")))
        # The forget is handled once a later message on the pipe is answered.
        assert harness.steal("queued") is None
        GATES["running"].set()
        harness.send(harness.run("after", big_bytes, INLINE_THRESHOLD))
        messages = harness.recv_until(lambda m: getattr(m, "key", None) == "after")
        assert [m.key for m in messages if isinstance(m, TaskDone)] == ["after"]
        assert isinstance(messages[-1].payload, BlobRef)
        store.adopt(messages[-1].payload)
        store.release(messages[-1].payload)


def test_a_forgotten_result_in_shared_memory_is_unlinked(
    harness_factory, gates
) -> None:
    gates("big")

    with BlobStore() as store:
        harness = harness_factory(nthreads=1, writer=store.writer())
        harness.send(harness.run("big", _gated_big, "big"))
        assert STARTED["big"].wait(DEADLINE)
        harness.send(ForgetKeys(keys=("big",)))
        assert harness.steal("big") == "executing"  # the forget was handled
        GATES["big"].set()
        harness.send(harness.run("after", add, 1, 1))
        harness.reply_to("after")  # one thread: "big" finished before it
        assert not [
            name
            for name in os.listdir(store.directory)
            if name.startswith(store.prefix)
        ]


def _gated_big(name: str) -> bytes:
    wait_gate(name)
    return bytes(INLINE_THRESHOLD * 4)


def test_large_results_are_written_into_granted_segments(harness_factory) -> None:
    with BlobStore() as store:
        freed = store.put(bytes(INLINE_THRESHOLD * 2))
        store.release(freed)  # a free segment of the result's size class
        lease = store.lease(freed.nbytes, holder=os.getpid())
        assert lease is not None
        harness = harness_factory(writer=store.writer())
        harness.send(
            GrantSegments(leases=(lease,)),
            harness.run("big", big_bytes, INLINE_THRESHOLD * 2),
        )
        reply = harness.reply_to("big")
        assert isinstance(reply.payload, BlobRef)
        assert reply.payload.segment == lease.segment  # reused, not created
        store.adopt(reply.payload)
        assert load(reply.payload) == bytes(INLINE_THRESHOLD * 2)
        store.release(reply.payload)


def test_tasks_run_concurrently_on_several_threads(harness_factory, gates) -> None:
    gates("a", "b")
    harness = harness_factory(nthreads=2)
    harness.send(harness.run("a", wait_gate, "a"), harness.run("b", wait_gate, "b"))
    # Both start before either gate opens: with one thread this would time out.
    assert STARTED["a"].wait(DEADLINE)
    assert STARTED["b"].wait(DEADLINE)
    GATES["a"].set()
    GATES["b"].set()
    assert isinstance(harness.reply_to("a"), TaskDone)
    assert isinstance(harness.reply_to("b"), TaskDone)


def test_tasks_needing_a_busy_resource_wait_while_others_run(
    harness_factory, gates
) -> None:
    gates("gpu-1", "gpu-2")
    harness = harness_factory(nthreads=2, resources={"GPU": 1})
    gpu = {"GPU": 1}
    harness.send(
        harness.run("gpu-1", wait_gate, "gpu-1", priority=(0,), needs=gpu),
        harness.run("gpu-2", wait_gate, "gpu-2", priority=(1,), needs=gpu),
        harness.run("cpu", add, 1, 1, priority=(2,)),
    )
    assert STARTED["gpu-1"].wait(DEADLINE)
    # The free thread skips gpu-2, whose GPU is taken, and runs cpu instead.
    assert isinstance(harness.reply_to("cpu"), TaskDone)
    assert not STARTED["gpu-2"].is_set()
    GATES["gpu-1"].set()
    assert STARTED["gpu-2"].wait(DEADLINE)  # the GPU came back
    GATES["gpu-2"].set()
    assert isinstance(harness.reply_to("gpu-2"), TaskDone)


def test_a_task_needing_more_than_the_worker_has_never_starts(
    harness_factory,
) -> None:
    harness = harness_factory(nthreads=1, resources={"GPU": 1})
    harness.send(
        harness.run("greedy", add, 1, 1, priority=(0,), needs={"GPU": 2}),
        harness.run("plain", add, 2, 2, priority=(1,)),
    )
    assert isinstance(harness.reply_to("plain"), TaskDone)
    assert harness.steal("greedy") == "ready"  # still queued, so stealable


def test_shutdown_sends_goodbye_and_serve_returns_the_reason(harness_factory) -> None:
    harness = harness_factory(nthreads=2)
    harness.send(Shutdown(reason="retired"))
    assert harness.recv_until(lambda m: isinstance(m, Goodbye))[-1] == Goodbye(
        reason="retired"
    )
    harness.join()
    assert harness.outcome == {"reason": "retired"}


def test_serve_returns_when_the_scheduler_end_closes(harness_factory) -> None:
    harness = harness_factory()
    harness.conn.close()
    harness.join()
    assert harness.outcome == {"reason": "scheduler gone"}


def test_garbage_from_the_scheduler_gets_a_goodbye_and_an_error(
    harness_factory,
) -> None:
    harness = harness_factory()
    harness.conn.send_bytes(b"not a batch")
    goodbye = harness.recv_until(lambda m: isinstance(m, Goodbye))[-1]
    assert goodbye.reason.startswith("protocol error")
    harness.join()
    assert isinstance(harness.outcome["error"], ProtocolError)


def test_a_message_meant_for_the_scheduler_is_a_protocol_error(
    harness_factory,
) -> None:
    harness = harness_factory()
    harness.send(Hello(pid=1, nthreads=1))
    goodbye = harness.recv_until(lambda m: isinstance(m, Goodbye))[-1]
    assert "cannot handle Hello" in goodbye.reason
    harness.join()


def test_zero_threads_is_rejected() -> None:
    left, right = Pipe()
    with pytest.raises(ValueError, match="nthreads"):
        Worker(right, 0)
    left.close()
    right.close()
