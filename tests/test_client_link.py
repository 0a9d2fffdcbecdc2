"""``Client`` against a fake ``SchedulerLink``: client behaviour without processes.

The link is the client's only door to the scheduler, so a fake one that records
what the client posts and answers its requests from a table shows exactly what
each method asks and how it reads the answer. No scheduler, no worker.
"""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future as CellFuture
from typing import Any

import cloudpickle
import pytest

from localsched import (
    Client,
    Event,
    Lock,
    Queue,
    SchedulerPlugin,
    Variable,
    WorkerPlugin,
    get_task_stream,
)
from localsched.client.future import Future, FutureCancelledError, RemoteTraceback
from localsched.errors import ClosedClientError
from localsched.scheduler import events as ev
from localsched.transport import pickling
from localsched.transport import requests as rq

Key = Hashable


class FakeLink:
    """A ``SchedulerLink`` that records posts and answers requests from a table.

    ``answers[type(request)](request)`` is the answer (raise to fail it; return
    a ``concurrent.futures.Future`` to answer later).
    """

    cluster = None
    in_process = False

    def __init__(self, is_shared: bool = False) -> None:
        self.is_shared = is_shared
        self.is_running = True
        self.has_failed = False
        self.events: list[ev.StateEvent] = []
        self.requests: list[rq.Request] = []
        self.results: dict[Key, Any] = {}
        self.loads: list[list[Key]] = []
        self.task: Key | None = None
        self.states: dict[Key, Any] = {}
        self.disconnected = False
        self.answers: dict[type[rq.Request], Callable[[Any], Any]] = {
            rq.Ping: lambda r: None
        }

    def connect(self, client_id, states, on_restart, timeout, on_event=None) -> str:
        self.states = states
        self.on_restart = on_restart
        self.on_event = on_event
        return "fake-client"

    def stopped_error(self) -> Exception:
        return ClosedClientError("the fake scheduler stopped")

    def disconnect(self, timeout: float | None) -> None:
        self.disconnected = True

    def post(self, *events: ev.StateEvent) -> None:
        self.events.extend(events)

    def request(self, request: rq.Request) -> CellFuture[Any]:
        self.requests.append(request)
        try:
            result = self.answers[type(request)](request)
        except Exception as exc:
            cell: CellFuture[Any] = CellFuture()
            cell.set_exception(exc)
            return cell
        if isinstance(result, CellFuture):
            return result
        cell = CellFuture()
        cell.set_result(result)
        return cell

    def stimulus_id(self, name: str) -> str:
        return f"{name}-fake"

    def load_result(self, key: Key) -> Any:
        return self.load_results([key])[key]

    def load_results(self, keys: Iterable[Key]) -> dict[Key, Any]:
        keys = list(keys)
        self.loads.append(keys)
        return {key: self.results[key] for key in keys}

    def request_results(self, keys: tuple[Key, ...]) -> CellFuture[Any]:
        cell: CellFuture[Any] = CellFuture()
        cell.set_result(keys)
        return cell

    def decode_results(self, answer: Any) -> dict[Key, Any]:
        return self.load_results(answer)

    def serialize(self, value: Any) -> bytes:
        return pickling.dumps(value, protocol=5)

    def release(self, payload: Any) -> None:
        pass

    def current_task(self) -> Key | None:
        return self.task

    # -- what the scheduler would do ------------------------------------------------

    def finish(self, future: Future, value: Any) -> None:
        self.results[future.key] = value
        self.states[future.key].finish(type(value).__name__)

    def of_type(self, kind: type[rq.Request]) -> list[Any]:
        return [r for r in self.requests if type(r) is kind]


@pytest.fixture
def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
def client(link: FakeLink) -> Client:
    client = Client(link=link, set_as_default=False)
    yield client
    client.close()


def inc(x: int) -> int:
    return x + 1


# -- events ---------------------------------------------------------------------------


def test_a_client_on_a_link_takes_the_links_id_and_has_no_cluster(client, link):
    assert client.id == "fake-client"
    assert client.cluster is None
    assert link.states is client._states
    with pytest.raises(AttributeError, match="no in-process Scheduler"):
        client.scheduler  # noqa: B018


def test_submit_posts_one_graph_naming_the_task_that_submits(client, link):
    link.task = "parent-key"
    future = client.submit(inc, 1, key="child", priority=3, retries=2)
    [event] = link.events
    assert isinstance(event, ev.UpdateGraph)
    assert (event.client, list(event.tasks), event.keys) == (
        "fake-client",
        ["child"],
        ["child"],
    )
    assert (event.user_priority, event.retries) == (3, 2)
    assert event.submitting_task == "parent-key"
    assert future.key == "child"


def test_map_posts_one_graph_for_every_call(client, link):
    futures = client.map(inc, [1, 2, 3])
    [event] = link.events
    assert sorted(event.keys) == sorted(f.key for f in futures)
    assert event.submitting_task is None


def test_a_result_is_loaded_through_the_link_and_a_dropped_future_released(
    client, link
):
    future = client.submit(inc, 1, key="x")
    link.finish(future, 2)
    assert future.result() == 2
    assert link.loads == [["x"]]
    future.release()
    released = [e for e in link.events if isinstance(e, ev.ClientReleasesKeys)]
    assert [e.keys for e in released] == [("x",)]


def test_gather_loads_every_finished_key_in_one_call(client, link):
    a, b, c = (client.submit(inc, i, key=f"k{i}") for i in range(3))
    link.finish(a, 1)
    link.finish(b, 2)
    link.states["k2"].set_error(ValueError("bad"), "")
    assert client.gather([a, c, b], errors="skip") == [1, 2]
    assert link.loads == [["k0", "k1"]]
    with pytest.raises(ValueError, match="bad"):
        client.gather([a, c])


# -- data and control requests ------------------------------------------------------


def test_scatter_sends_serialized_values_to_the_named_workers(client, link):
    link.answers[rq.Scatter] = lambda r: None
    futures = client.scatter({"a": 1, "b": [2]}, workers="w1")
    [request] = link.requests
    assert request.workers == ("w1",)
    assert {key: pickle.loads(payload) for key, payload in request.data} == {
        "a": 1,
        "b": [2],
    }
    assert set(futures) == {"a", "b"}


def test_cancel_posts_the_cancel_then_waits_for_the_scheduler(client, link):
    future = client.submit(inc, 1, key="x")
    client.cancel(future)
    [cancel] = [e for e in link.events if isinstance(e, ev.CancelRequested)]
    assert (cancel.keys, cancel.force) == (["x"], False)
    assert link.requests == [rq.Ping()]


def test_force_cancel_is_a_request(client, link):
    link.answers[rq.ForceCancel] = lambda r: ["w1"]
    future = client.submit(inc, 1, key="x")
    client.cancel([future], force=True)
    assert link.requests == [rq.ForceCancel(keys=("x",))]
    assert not [e for e in link.events if isinstance(e, ev.CancelRequested)]


def test_retry_posts_the_retry_then_waits_for_the_scheduler(client, link):
    future = client.submit(inc, 1, key="x")
    client.retry([future])
    assert [e.keys for e in link.events if isinstance(e, ev.RetryRequested)] == [["x"]]
    assert link.requests == [rq.Ping()]


def test_restart_waits_until_new_workers_replaced_the_old(client, link):
    link.answers[rq.Restart] = lambda r: ["a", "b"]
    views = iter(
        [
            {"a": "running", "b": "running"},
            {"b": "running"},
            {"c": "running", "d": "running"},
        ]
    )
    link.answers[rq.WorkerStatus] = lambda r: next(views)
    client.restart(timeout=10)
    assert link.requests[0] == rq.Restart()
    assert len(link.of_type(rq.WorkerStatus)) == 3


def test_a_restart_the_scheduler_refuses_raises_its_error(client, link):
    def refuse(request: rq.Restart) -> None:
        raise RuntimeError("Client.restart() cannot run inside a task")

    link.answers[rq.Restart] = refuse
    with pytest.raises(RuntimeError, match="cannot run inside a task"):
        client.restart()


#: Methods that return nothing: the request is all there is to check.
_NO_ANSWER = (rq.SetMetadata, rq.RemoveSchedulerPlugin)


@pytest.mark.parametrize(
    ("call", "request_"),
    [
        (lambda c, f: c.scheduler_info(n_workers=1), rq.SchedulerInfo(n_workers=1)),
        (lambda c, f: c.nthreads("w1"), rq.NThreads(workers=("w1",))),
        (lambda c, f: c.who_has([f]), rq.WhoHas(keys=("x",))),
        (lambda c, f: c.who_has(), rq.WhoHas(keys=None)),
        (lambda c, f: c.has_what(["w1", "w2"]), rq.HasWhat(workers=("w1", "w2"))),
        (lambda c, f: c.processing(), rq.Processing(workers=None)),
        (lambda c, f: c.story(f, "stim-1"), rq.Story(keys=("x", "stim-1"))),
        (
            lambda c, f: c.nbytes(["x"], summary=False),
            rq.NBytes(keys=("x",), summary=False),
        ),
        (
            lambda c, f: c.get_metadata(["a", "b"], default=3),
            rq.GetMetadata(keys=("a", "b"), default=3),
        ),
        (lambda c, f: c.get_metadata("a"), rq.GetMetadata(keys=("a",), default=...)),
        (lambda c, f: c.set_metadata("k", 1), rq.SetMetadata(keys=("k",), value=1)),
        (
            lambda c, f: c.run_on_scheduler(inc, 1),
            rq.RunOnScheduler(function=inc, args=(1,), kwargs={}),
        ),
        (lambda c, f: c.get_task_stream(count=3), rq.TaskStream(count=3)),
        (
            lambda c, f: c.unregister_scheduler_plugin("p"),
            rq.RemoveSchedulerPlugin(name="p"),
        ),
    ],
)
def test_an_introspection_call_sends_its_request_and_returns_the_answer(
    client, link, call, request_
):
    future = client.submit(inc, 1, key="x")
    link.answers[type(request_)] = lambda r: ("answer", r)
    returned = call(client, future)
    assert link.requests == [request_]
    if isinstance(request_, _NO_ANSWER):
        assert returned is None
    else:
        assert returned == ("answer", request_)


def test_run_sends_the_function_pickled_and_unpacks_each_workers_answer(client, link):
    answers = {
        "local://1/10": (True, pickling.dumps(10), ""),
        "local://1/9": (False, pickling.dumps(ValueError("no")), "Traceback..."),
    }
    link.answers[rq.RunOnWorkers] = lambda r: answers
    results = client.run(
        inc, 1, workers=["local://1/9", "local://1/10"], on_error="return"
    )
    [request] = link.requests
    assert cloudpickle.loads(request.function) is inc
    assert cloudpickle.loads(request.args) == ((1,), {})
    assert request.workers == ("local://1/9", "local://1/10")
    assert list(results) == ["local://1/9", "local://1/10"]  # address order
    assert results["local://1/10"] == 10
    error = results["local://1/9"]
    assert isinstance(error, ValueError)
    assert isinstance(error.__cause__, RemoteTraceback)
    with pytest.raises(ValueError, match="no"):
        client.run(inc, 1)
    assert client.run(inc, 1, on_error="ignore") == {"local://1/10": 10}


def test_retire_workers_waits_until_the_retired_workers_left(client, link):
    link.answers[rq.RetireWorkers] = lambda r: {"w1": {"name": 0}}
    views = iter([{"w1": "closing_gracefully", "w2": "running"}, {"w2": "running"}])
    link.answers[rq.WorkerStatus] = lambda r: next(views)
    assert client.retire_workers(["w1"], close_workers=True) == {"w1": {"name": 0}}
    assert link.requests[0] == rq.RetireWorkers(workers=("w1",), close_workers=True)
    assert len(link.of_type(rq.WorkerStatus)) == 2


def test_wait_for_workers_without_a_cluster_asks_until_enough_run(client, link):
    views = iter([{}, {"w1": "running"}, {"w1": "running", "w2": "running"}])
    link.answers[rq.WorkerStatus] = lambda r: next(views)
    client.wait_for_workers(2, timeout=10)
    assert len(link.of_type(rq.WorkerStatus)) == 3
    link.answers[rq.WorkerStatus] = lambda r: {"w1": "running"}
    with pytest.raises(TimeoutError, match="Only 1 of 2 workers"):
        client.wait_for_workers(2, timeout=0.01)


class _SchedulerPlugin(SchedulerPlugin):
    name = "s-plugin"


class _WorkerPlugin(WorkerPlugin):
    name = "w-plugin"


def test_plugins_are_registered_by_request(client, link):
    link.answers[rq.AddSchedulerPlugin] = lambda r: None
    link.answers[rq.AddWorkerPlugin] = lambda r: {"w1": (True, b"", "")}
    link.answers[rq.RemoveWorkerPlugin] = lambda r: {"w1": (True, b"", "")}
    plugin = _SchedulerPlugin()
    assert client.register_plugin(plugin) is None
    assert link.requests[-1] == rq.AddSchedulerPlugin(
        plugin=plugin, name="s-plugin", idempotent=False
    )
    assert client.register_plugin(_WorkerPlugin()) == {"w1": {"status": "OK"}}
    sent = link.requests[-1]
    assert (sent.name, type(cloudpickle.loads(sent.plugin))) == (
        "w-plugin",
        _WorkerPlugin,
    )
    link.answers[rq.AddWorkerPlugin] = lambda r: None  # idempotent, present
    assert client.register_plugin(_WorkerPlugin(), idempotent=True) == {}
    assert client.unregister_worker_plugin("w-plugin") == {"w1": {"status": "OK"}}
    assert link.requests[-1] == rq.RemoveWorkerPlugin(name="w-plugin")


# -- coordination primitives and datasets ---------------------------------------------


def test_a_lock_waits_for_its_lease_and_releases_it(client, link):
    link.answers[rq.WaitFor] = lambda r: True
    link.answers[rq.Coordinate] = lambda r: True
    lock = Lock("L", client=client)
    assert lock.acquire(timeout=5)
    [wait] = link.of_type(rq.WaitFor)
    assert wait.operation is rq.Operation.SEMAPHORE_ACQUIRE
    assert wait.args[:2] == ("L", 1)
    lock.release()
    [release] = link.of_type(rq.Coordinate)
    assert release == rq.Coordinate(
        operation=rq.Operation.SEMAPHORE_RELEASE, args=("L", wait.args[2])
    )


def test_a_wait_that_times_out_is_withdrawn(client, link):
    never: CellFuture[Any] = CellFuture()
    link.answers[rq.WaitFor] = lambda r: never
    link.answers[rq.Coordinate] = lambda r: True  # withdrawn before an answer
    assert Event("E", client=client).wait(timeout=0.01) is False
    [wait] = link.of_type(rq.WaitFor)
    [cancel] = link.of_type(rq.Coordinate)
    assert cancel == rq.Coordinate(
        operation=rq.Operation.WAIT_CANCEL, args=(wait.wait_id,)
    )


def test_event_set_and_clear_are_coordination_requests(client, link):
    link.answers[rq.Coordinate] = lambda r: r.operation is rq.Operation.EVENT_IS_SET
    event = Event("E", client=client)
    event.set()
    event.clear()
    assert event.is_set() is True
    assert [r.operation for r in link.requests] == [
        rq.Operation.EVENT_SET,
        rq.Operation.EVENT_CLEAR,
        rq.Operation.EVENT_IS_SET,
    ]
    assert all(r.args == ("E",) for r in link.requests)


def test_a_variable_hands_over_its_future_to_the_reader(client, link):
    stored = {}

    def coordinate(r: rq.Coordinate) -> Any:
        if r.operation is rq.Operation.VARIABLE_SET:
            stored["record"] = r.args[1]
        return None

    link.answers[rq.Coordinate] = coordinate
    link.answers[rq.WaitFor] = lambda r: (*stored["record"], "handoff-1")
    future = client.submit(inc, 1, key="x")
    Variable("V", client=client).set(future)
    assert stored["record"][1] == ("x",)  # the scheduler holds the key
    got = Variable("V", client=client).get(timeout=5)
    assert (type(got), got.key) == (Future, "x")
    assert link.requests[-1] == rq.Coordinate(
        operation=rq.Operation.HANDOFF_DONE, args=("handoff-1",)
    )


def test_a_queue_puts_and_gets_by_request(client, link):
    items = []

    def wait_for(r: rq.WaitFor) -> Any:
        if r.operation is rq.Operation.QUEUE_PUT:
            items.append(r.args[1])
            return True
        return [items.pop(0)], None

    link.answers[rq.WaitFor] = wait_for
    link.answers[rq.Coordinate] = lambda r: None
    queue = Queue("Q", client=client)
    queue.put({"a": 1})
    assert queue.get(timeout=5) == {"a": 1}
    assert [r.operation for r in link.of_type(rq.WaitFor)] == [
        rq.Operation.QUEUE_PUT,
        rq.Operation.QUEUE_GET,
    ]


def test_datasets_are_published_listed_and_read_by_request(client, link):
    published = {}

    def coordinate(r: rq.Coordinate) -> Any:
        if r.operation is rq.Operation.PUBLISH_PUT:
            names, records, _override = r.args
            published.update(zip(names, records, strict=True))
            return None
        if r.operation is rq.Operation.PUBLISH_LIST:
            return sorted(published)
        if r.operation is rq.Operation.PUBLISH_GET:
            return [
                (*published[n], None) if n in published else None for n in r.args[0]
            ]
        return None

    link.answers[rq.Coordinate] = coordinate
    client.publish_dataset(x=[1, 2])
    assert client.list_datasets() == ["x"]
    assert client.get_dataset("x") == [1, 2]
    assert client.get_dataset("y", default=None) is None
    with pytest.raises(KeyError, match="not found"):
        client.get_dataset("y")
    assert dict(client.datasets) == {"x": [1, 2]}


# -- closing --------------------------------------------------------------------------


def test_close_disconnects_and_cancels_the_futures(link):
    client = Client(link=link, set_as_default=False)
    future = client.submit(inc, 1, key="x")
    client.close()
    assert link.disconnected
    assert client.status == "closed"
    with pytest.raises(FutureCancelledError, match="client-closed"):
        future.result()


def test_a_client_on_a_shared_link_stays_open(link):
    link.is_shared = True
    client = Client(link=link, set_as_default=False)
    client.close()
    assert (client.status, link.disconnected) == ("running", False)
    with pytest.raises(RuntimeError, match="cannot shut its cluster"):
        client.shutdown()


# -- the requests themselves ------------------------------------------------------


def _request_types() -> list[type[rq.Request]]:
    return [
        getattr(rq, name)
        for name in rq.__all__
        if isinstance(getattr(rq, name), type)
        and issubclass(getattr(rq, name), rq.Request)
        and getattr(rq, name) is not rq.Request
    ]


def _example(kind: type[rq.Request]) -> rq.Request:
    """An instance with every required field filled in."""
    values = {
        "key": "x",
        "keys": ("x",),
        "data": (("x", b"1"),),
        "function": b"f",
        "args": b"a",
        "plugin": b"p",
        "name": "n",
        "wait_id": "w",
        "operation": rq.Operation.EVENT_SET,
        "value": 1,
        "topics": ("t",),
        "topic": "t",
        "msg": {"a": 1},
        "session": 1,
    }
    required = {
        f.name: values[f.name]
        for f in dataclasses.fields(kind)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return kind(**required)


@pytest.mark.parametrize("kind", _request_types(), ids=lambda k: k.__name__)
def test_every_request_is_frozen_slotted_keyword_only_and_crosses_a_pipe(kind):
    request = _example(kind)
    params = kind.__dataclass_params__
    assert params.frozen
    assert hasattr(kind, "__slots__")
    assert all(f.kw_only for f in dataclasses.fields(kind))
    assert cloudpickle.loads(pickling.dumps(request)) == request


def test_the_handler_answers_every_request_type():
    from localsched.runtime.request_handler import _HANDLERS

    assert set(_HANDLERS) == set(_request_types())


def test_the_operations_are_the_coordination_methods():
    from localsched.runtime.coordination_state import OPERATIONS

    assert {op.value for op in rq.Operation} == set(OPERATIONS)


def test_a_task_stream_block_reads_from_its_start_index(client, link):
    indexes = itertools.count(7)
    link.answers[rq.TaskStreamIndex] = lambda r: next(indexes)
    link.answers[rq.TaskStream] = lambda r: [{"key": "x", "from": r.start_index}]
    with get_task_stream(client) as stream:
        pass
    assert stream.data == [{"key": "x", "from": 7}]
