"""Worker plugins in a ``Worker`` served in a thread over a ``Pipe``: the wire
messages, the hooks' arguments and the worker-side transitions, without a
child process."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections.abc import Iterator

import pytest

from localsched.plugins import WorkerPlugin
from localsched.transport import pickling
from localsched.transport.protocol import (
    AddPlugin,
    ForgetKeys,
    FunctionResult,
    Goodbye,
    Hello,
    Message,
    RemovePlugin,
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
from localsched.worker.main import Worker

pytestmark = pytest.mark.timeout(60)

DEADLINE = 20.0

#: What the plugins saw, by plugin name (same process: shared by reference).
SEEN: dict[str, list[tuple]] = {}


class Recording(WorkerPlugin):
    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, worker) -> None:
        self.worker = worker
        SEEN.setdefault(self.name, []).append(("setup", worker.address, worker.name))

    def teardown(self, worker) -> None:
        SEEN[self.name].append(("teardown", worker.address))

    def transition(self, key, start, finish, **kwargs) -> None:
        entry: tuple = ("transition", key, start, finish)
        if finish == "memory":
            entry += (self.worker.data[key],)
        elif finish == "error":
            entry += (type(self.worker.exceptions[key]).__name__,)
        SEEN[self.name].append(entry)


class AsyncSetup(WorkerPlugin):
    name = "async"

    async def setup(self, worker) -> None:
        SEEN.setdefault(self.name, []).append(("setup", worker.address))


class BadSetup(WorkerPlugin):
    name = "bad"

    def setup(self, worker) -> None:
        raise KeyError("no setup for you")


class Harness:
    def __init__(self, nthreads: int = 1) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.worker = Worker(child, nthreads)
        self.thread = threading.Thread(target=self.worker.serve, daemon=True)
        self.thread.start()
        self.unread: list[Message] = []
        self.run_ids = iter(range(1, 10**6))
        assert isinstance(self.next(), Hello)

    def send(self, *messages: Message) -> None:
        self.conn.send_bytes(encode_batch(messages))

    def next(self) -> Message:
        if not self.unread:
            assert self.conn.poll(DEADLINE), "the worker sent nothing in time"
            self.unread.extend(decode_batch(self.conn.recv_bytes()))
        return self.unread.pop(0)

    def add(self, plugin: WorkerPlugin, id: int = 1) -> FunctionResult:
        self.send(
            AddPlugin(
                id=id,
                name=plugin.name,
                plugin=pickling.dumps(plugin),
                address="local://1/0",
                worker_name=0,
            )
        )
        reply = self.next()
        assert isinstance(reply, FunctionResult)
        return reply

    def run(self, key, function, *args, resources=None) -> RunTask:
        token, data = dumps_function(function)
        return RunTask(
            key=key,
            run_id=next(self.run_ids),
            function_token=token,
            function=data,
            args=pickle.dumps((args, {})),
            resource_restrictions=resources,
        )

    def close(self) -> None:
        self.send(Shutdown(reason="test over"))
        while not isinstance(self.next(), Goodbye):
            pass
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()
        self.conn.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    SEEN.clear()
    h = Harness()
    yield h
    if h.thread.is_alive():
        h.close()


def double(x: int) -> int:
    return 2 * x


def explode(x: int) -> int:
    raise OSError(x)


def test_add_plugin_sets_up_with_the_workers_address_and_answers(harness):
    reply = harness.add(Recording("a"), id=7)
    assert reply.id == 7
    assert reply.ok
    assert SEEN["a"] == [("setup", "local://1/0", 0)]
    assert harness.worker.plugins.worker.plugins.keys() == {"a"}


def test_tasks_go_through_dasks_worker_states(harness):
    harness.add(Recording("a"))
    harness.send(harness.run("k", double, 21), harness.run("e", explode, 1))
    done = {type(harness.next()), type(harness.next())}
    assert done == {TaskDone, TaskFailed}
    steps = [s[1:] for s in SEEN["a"] if s[0] == "transition"]
    assert [s for s in steps if s[0] == "k"] == [
        ("k", "released", "waiting"),
        ("k", "waiting", "ready"),
        ("k", "ready", "executing"),
        ("k", "executing", "memory", 42),
    ]
    assert [s for s in steps if s[0] == "e"][-1] == (
        "e",
        "executing",
        "error",
        "OSError",
    )
    state = harness.worker.plugins.worker.state
    assert state.tasks["e"].state == "error"
    harness.send(ForgetKeys(keys=("k", "e")))
    harness.close()  # the control thread handled ForgetKeys before Shutdown
    assert ("transition", "k", "memory", "released") in SEEN["a"]
    assert ("transition", "e", "error", "released") in SEEN["a"]
    assert SEEN["a"][-1] == ("teardown", "local://1/0")
    assert state.tasks == {}


def test_constrained_tasks_and_steals(harness):
    harness.add(Recording("a"))
    # one thread, busy with a constrained task needing a resource it lacks:
    # never starts, so a steal takes it back
    harness.send(harness.run("c", double, 1, resources={"GPU": 1}))
    harness.send(StealQuery(key="c"))
    answer = harness.next()
    assert answer == StealAnswer(key="c", state="ready")
    steps = [s[1:] for s in SEEN["a"] if s[0] == "transition"]
    assert steps == [
        ("c", "released", "waiting"),
        ("c", "waiting", "constrained"),
        ("c", "constrained", "released"),
    ]


def test_remove_plugin_tears_down_and_stops_recording(harness):
    harness.add(Recording("a"))
    harness.send(RemovePlugin(id=3, name="a"))
    reply = harness.next()
    assert isinstance(reply, FunctionResult)
    assert reply.ok
    assert SEEN["a"][-1] == ("teardown", "local://1/0")
    assert not harness.worker.plugins.active
    harness.send(harness.run("k", double, 1))
    assert isinstance(harness.next(), TaskDone)
    assert not any(s[0] == "transition" for s in SEEN["a"])


def test_remove_unknown_plugin_answers_with_the_error(harness):
    harness.send(RemovePlugin(id=4, name="nope"))
    reply = harness.next()
    assert not reply.ok
    assert isinstance(pickle.loads(reply.payload), KeyError)


def test_async_setup_is_awaited_and_failing_setup_is_reported(harness):
    assert harness.add(AsyncSetup()).ok
    assert SEEN["async"] == [("setup", "local://1/0")]
    reply = harness.add(BadSetup())
    assert not reply.ok
    assert isinstance(pickle.loads(reply.payload), KeyError)
    assert "no setup for you" in reply.traceback_text
    # dask keeps a plugin whose setup failed (its teardown runs at close)
    assert "bad" in harness.worker.plugins.worker.plugins


def test_plugin_messages_round_trip():
    for message in (
        AddPlugin(id=1, name="n", plugin=b"x", address="a", worker_name=("w", 1)),
        RemovePlugin(id=-1, name="n"),
    ):
        assert decode_batch(encode_batch([message])) == [message]
