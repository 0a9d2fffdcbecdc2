"""Real worker processes: the few tests that need a child process.

Task functions are defined inside the tests, so cloudpickle sends them by value
and the child never imports this module (or pytest).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import pytest

from localsched.transport.pickling import loads_traceback
from localsched.transport.protocol import (
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    RunTask,
    Shutdown,
    StealAnswer,
    StealQuery,
    TaskDone,
    TaskFailed,
    decode_batch,
    dumps_function,
    encode_batch,
)
from localsched.transport.shm import BlobRef, BlobStore, load
from localsched.worker.main import run_worker

if TYPE_CHECKING:
    from collections.abc import Callable

DEADLINE = 20.0  # seconds; bounds every wait below
START_METHOD = "forkserver"  # safe with threads running, as the runtime needs


class WorkerProcess:
    """A worker child process and the scheduler's end of its pipe."""

    def __init__(self, nthreads: int, writer=None) -> None:
        context = multiprocessing.get_context(START_METHOD)
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=run_worker, args=(child_conn, nthreads, writer), daemon=True
        )
        self.process.start()
        child_conn.close()  # else our own copy would hide the child's EOF
        self.unread: list[Message] = []
        self.run_ids = iter(range(1, 10**6))

    def send(self, *messages: Message) -> None:
        self.conn.send_bytes(encode_batch(messages))

    def run(self, key, function: Callable, *args, priority=(0,)) -> RunTask:
        token, data = dumps_function(function)
        return RunTask(
            key=key,
            run_id=next(self.run_ids),
            function_token=token,
            function=data,
            args=pickle.dumps((args, {})),
            priority=priority,
        )

    def next_message(self) -> Message:
        """The next message other than a Heartbeat (sent while tasks run)."""
        while True:
            if not self.unread:
                assert self.conn.poll(DEADLINE), "the worker sent nothing in time"
                self.unread.extend(decode_batch(self.conn.recv_bytes()))
            message = self.unread.pop(0)
            if not isinstance(message, Heartbeat):
                return message

    def expect(self, cls: type, key=None) -> Message:
        message = self.next_message()
        assert isinstance(message, cls), message
        if key is not None:
            assert message.key == key
        return message

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(DEADLINE)
        self.conn.close()


@pytest.fixture
def start_worker():
    workers: list[WorkerProcess] = []

    def start(nthreads: int = 1, writer=None) -> WorkerProcess:
        worker = WorkerProcess(nthreads, writer)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def gate():
    """An abstract unix socket: a task connects (proving it started) and blocks
    until the test closes the accepted connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address = f"\0localsched-test-{secrets.token_hex(8)}"
    listener.bind(address)
    listener.listen()
    listener.settimeout(DEADLINE)
    yield address, listener
    listener.close()


def block_on(address: str) -> str:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(address)
        connection.recv(1)  # b"" once the test closes its end
    return "released"


@pytest.mark.timeout(30)
def test_worker_process_runs_tasks_and_says_goodbye(start_worker, gate) -> None:
    address, listener = gate

    class TaskError(ValueError):
        pass

    def inc(x: int) -> int:
        return x + 1

    def fail() -> None:
        raise TaskError("boom")

    def faulthandler_enabled() -> bool:
        import faulthandler

        return faulthandler.is_enabled()

    with BlobStore() as store:
        worker = start_worker(nthreads=1, writer=store.writer())
        hello = worker.expect(Hello)
        assert (hello.pid, hello.nthreads) == (worker.process.pid, 1)

        worker.send(worker.run("inc", inc, 41))
        done = worker.expect(TaskDone, "inc")
        assert isinstance(done.payload, bytes)
        assert load(done.payload) == 42

        worker.send(worker.run("faulthandler", faulthandler_enabled))
        assert load(worker.expect(TaskDone, "faulthandler").payload) is True

        worker.send(worker.run("fail", fail))
        failed = worker.expect(TaskFailed, "fail")
        exception = pickle.loads(failed.exception)
        assert type(exception) is TaskError  # cloudpickle keeps the class identity
        assert "boom" in failed.exception_text
        assert "raise TaskError" in failed.traceback_text
        if failed.traceback is not None:  # tblib is installed
            frames = traceback.extract_tb(loads_traceback(failed.traceback))
            assert [frame.name for frame in frames] == ["fail"]

        np = pytest.importorskip("numpy")

        def arange(n: int):
            import numpy

            return numpy.arange(n, dtype="int64")

        worker.send(worker.run("big", arange, 1_000_000))
        big = worker.expect(TaskDone, "big")
        assert isinstance(big.payload, BlobRef)
        assert big.type == "numpy.ndarray"
        store.adopt(big.payload)
        np.testing.assert_array_equal(load(big.payload), np.arange(1_000_000))
        store.release(big.payload)

        worker.send(
            worker.run("blocked", block_on, address, priority=(0,)),
            worker.run("queued", inc, 0, priority=(1,)),
        )
        connection, _ = listener.accept()  # "blocked" is running on the one thread
        worker.send(StealQuery(key="queued"), StealQuery(key="blocked"))
        assert worker.expect(StealAnswer) == StealAnswer(key="queued", state="ready")
        assert worker.expect(StealAnswer) == StealAnswer(
            key="blocked", state="executing"
        )
        connection.close()
        assert load(worker.expect(TaskDone, "blocked").payload) == "released"

        worker.send(Shutdown(reason="test over"))
        assert worker.expect(Goodbye) == Goodbye(reason="test over")
        worker.process.join(DEADLINE)
        assert worker.process.exitcode == 0
    assert not os.path.exists(store.directory)


@pytest.mark.timeout(30)
def test_worker_exits_when_the_scheduler_end_of_the_pipe_closes(
    start_worker, gate
) -> None:
    address, listener = gate

    def block_with_a_stray_thread(address: str) -> None:
        import socket
        import threading

        # A non-daemon thread blocked for good must not keep the worker alive.
        threading.Thread(target=threading.Event().wait, daemon=False).start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(address)
            connection.recv(1)

    worker = start_worker(nthreads=2)
    worker.expect(Hello)
    worker.send(worker.run("stuck", block_with_a_stray_thread, address))
    connection, _ = listener.accept()  # the task runs and holds a thread
    worker.conn.close()
    worker.process.join(DEADLINE)
    connection.close()
    assert worker.process.exitcode == 0, "the worker outlived its scheduler"


def _start_worker_and_hand_over_its_pipe(channel: socket.socket) -> None:
    # Runs in an intermediate process: it becomes the worker's parent, gives the
    # scheduler end of the pipe to the test (so no EOF can reach the worker when
    # this process dies), then waits to be killed.
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    worker = context.Process(target=run_worker, args=(child_conn, 1))
    worker.start()
    child_conn.close()
    socket.send_fds(channel, [str(worker.pid).encode()], [conn.fileno()])
    channel.recv(1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
@pytest.mark.timeout(30)
def test_worker_is_killed_when_its_parent_dies_even_with_the_pipe_open() -> None:
    context = multiprocessing.get_context("spawn")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = context.Process(
        target=_start_worker_and_hand_over_its_pipe, args=(theirs,)
    )
    parent.start()
    theirs.close()
    ours.settimeout(DEADLINE)
    pid_bytes, fds, _, _ = socket.recv_fds(ours, 32, 1)
    conn = Connection(fds[0])
    try:
        assert conn.poll(DEADLINE)
        assert decode_batch(conn.recv_bytes()) == [
            Hello(pid=int(pid_bytes), nthreads=1)
        ]
        parent.kill()
        parent.join(DEADLINE)
        # We hold the other end, so only the worker's death makes this readable.
        assert conn.poll(DEADLINE), "the worker outlived its parent"
        with pytest.raises(EOFError):
            conn.recv_bytes()
    finally:
        conn.close()
        ours.close()
        if parent.is_alive():
            parent.kill()
            parent.join(DEADLINE)


@pytest.mark.timeout(30)
def test_worker_modules_import_nothing_from_the_scheduler() -> None:
    # localsched/__init__.py imports the scheduler for its public API; load the
    # worker with an empty package object instead, to see its own imports.
    package_dir = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    code = (
        "import sys, types\n"
        "package = types.ModuleType('localsched')\n"
        f"package.__path__ = [{os.path.join(package_dir, 'localsched')!r}]\n"
        "sys.modules['localsched'] = package\n"
        "import localsched.worker.main\n"
        "print(sorted(m for m in sys.modules if m.startswith('localsched')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    imported = eval(result.stdout)
    assert "localsched.worker.main" in imported
    assert [m for m in imported if m.startswith("localsched.scheduler")] == []
    assert "localsched.plugins" not in imported


class ExitOnLoad:
    """Kills the process that unpickles it: a crash while loading arguments."""

    def __reduce__(self):
        return (os._exit, (5,))


def _crash(kind: str) -> Callable[[], None]:
    # Local functions travel by value, so the child never imports this module.
    def exit_now() -> None:
        import os

        os._exit(3)

    def segfault() -> None:
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV

    return {"exit": exit_now, "segfault": segfault, "none": abs}[kind]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("crash", "args", "exitcode"),
    [
        ("exit", (), 3),
        ("segfault", (), -signal.SIGSEGV),
        ("none", (ExitOnLoad(),), 5),
    ],
    ids=["os._exit-in-task", "segfault-in-task", "os._exit-loading-args"],
)
def test_a_crashing_task_ends_the_worker_without_a_goodbye(
    start_worker, crash, args, exitcode
) -> None:
    worker = start_worker()
    worker.expect(Hello)
    worker.send(worker.run("crash", _crash(crash), *args))
    assert worker.conn.poll(DEADLINE), "the worker neither replied nor died"
    with pytest.raises(EOFError):  # a Goodbye or a reply would decode here
        worker.conn.recv_bytes()
    worker.process.join(DEADLINE)
    assert worker.process.exitcode == exitcode


@pytest.mark.timeout(30)
def test_read_only_tasks_share_one_unpickled_dependency(start_worker, gate) -> None:
    address, listener = gate
    from localsched.transport.protocol import TaskRef
    from localsched.worker.shared_inputs import READS_INPUTS_ONLY

    def shared_state(value: bytes) -> tuple[int, int, int, int]:
        from localsched.worker.context import thread_state

        shared = thread_state.worker.shared_inputs
        return shared.hits, shared.misses, len(shared), id(value)

    def private_state(value: bytes) -> tuple[int, int, int, int]:
        return shared_state(value)

    setattr(shared_state, READS_INPUTS_ONLY, True)  # cloudpickle keeps it

    with BlobStore() as store:
        worker = start_worker(nthreads=1, writer=store.writer())
        worker.expect(Hello)
        ref = store.put(bytes(200_000))
        tasks = []
        for priority, (key, function) in enumerate(
            [("r1", shared_state), ("r2", shared_state), ("p", private_state)], 1
        ):
            task = worker.run(key, function, TaskRef("a"), priority=(priority,))
            tasks.append(replace(task, dependencies={"a": ref}))
        # One thread, held by "blocked": the three queue up and run in a row.
        worker.send(worker.run("blocked", block_on, address, priority=(0,)), *tasks)
        connection, _ = listener.accept()
        connection.close()
        worker.expect(TaskDone, "blocked")
        first = load(worker.expect(TaskDone, "r1").payload)
        second = load(worker.expect(TaskDone, "r2").payload)
        private = load(worker.expect(TaskDone, "p").payload)
        assert first[:3] == (0, 1, 1)
        assert second[:3] == (1, 1, 1)
        assert second[3] == first[3]  # the same object
        assert private[:3] == (1, 1, 1)  # loaded on its own, not through the cache
        assert private[3] != first[3]
