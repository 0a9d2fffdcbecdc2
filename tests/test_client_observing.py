"""Events, logs, call stacks and the profile: what the client asks, on a fake link.

Each method is one typed request; events of subscribed topics come back through
the weak ``on_event`` hook the client hands its link, and run on the client's
event thread. No scheduler, no worker.
"""

from __future__ import annotations

import logging
import pickle
import threading
import warnings

import pytest

from localsched import Client
from localsched.plugins import ForwardLoggingPlugin
from localsched.transport import requests as rq
from tests.test_client_link import FakeLink

DEADLINE = 10.0


@pytest.fixture
def link() -> FakeLink:
    fake = FakeLink()
    for kind in (rq.LogEvent, rq.SubscribeTopic, rq.AddWorkerPlugin):
        fake.answers[kind] = lambda r: None
    fake.answers[rq.RemoveWorkerPlugin] = lambda r: {}
    return fake


@pytest.fixture
def client(link: FakeLink):
    client = Client(link=link, set_as_default=False)
    yield client
    client.close()


def deliver(link: FakeLink, topic: str, msg: object, when: float = 1.0) -> None:
    """What the scheduler does for a subscribed topic."""
    sink = link.on_event()
    assert sink is not None
    sink(topic, (when, msg))


def test_log_event_sends_the_topics_and_the_message(client, link):
    client.log_event("t", {"a": 1})
    client.log_event(["t", "u"], 2)
    assert link.of_type(rq.LogEvent) == [
        rq.LogEvent(topics=("t",), msg={"a": 1}),
        rq.LogEvent(topics=("t", "u"), msg=2),
    ]


def test_log_event_refuses_a_message_that_cannot_be_pickled(client, link):
    with pytest.raises(TypeError, match="picklable"):
        client.log_event("t", threading.Lock())
    assert link.of_type(rq.LogEvent) == []


def test_get_events_asks_for_one_topic_or_all(client, link):
    link.answers[rq.GetEvents] = lambda r: (
        {"t": ((1.0, "x"),)} if r.topic is None else ((1.0, "x"),)
    )
    assert client.get_events("t") == ((1.0, "x"),)
    assert client.get_events() == {"t": ((1.0, "x"),)}
    assert [r.topic for r in link.of_type(rq.GetEvents)] == ["t", None]


def test_a_subscribed_topic_runs_its_handler_on_the_clients_event_thread(client, link):
    seen: list[tuple[object, str]] = []
    done = threading.Event()

    def handler(event):
        seen.append((event, threading.current_thread().name))
        done.set()

    client.subscribe_topic("t", handler)
    assert link.of_type(rq.SubscribeTopic) == [rq.SubscribeTopic(topic="t")]
    deliver(link, "t", "hello", when=5.0)
    assert done.wait(DEADLINE)
    assert seen == [((5.0, "hello"), "localsched-events")]


def test_unsubscribing_stops_the_handler_and_tells_the_scheduler(client, link):
    seen = []
    client.subscribe_topic("t", seen.append)
    client.unsubscribe_topic("t")
    deliver(link, "t", "late")
    client.close()  # runs every queued event first
    assert seen == []
    assert link.of_type(rq.SubscribeTopic)[-1] == rq.SubscribeTopic(
        topic="t", subscribe=False
    )


def test_unsubscribing_an_unknown_topic_raises(client):
    with pytest.raises(ValueError, match="No event handler known for topic nope"):
        client.unsubscribe_topic("nope")


def test_events_queued_before_close_are_handled_before_close_returns(client, link):
    seen = []
    client.subscribe_topic("t", seen.append)
    for i in range(50):
        deliver(link, "t", i)
    client.close()
    assert [msg for _, msg in seen] == list(range(50))
    assert not any(t.name == "localsched-events" for t in threading.enumerate())


def test_a_print_event_prints_on_the_client(client, link, capsys):
    deliver(
        link, "print", {"args": ("a", "1"), "sep": "-", "end": "!\n", "flush": False}
    )
    deliver(link, "print", {"args": ("err",), "sep": " ", "end": "\n", "file": 2})
    client.close()
    out, err = capsys.readouterr()
    assert (out, err) == ("a-1!\n", "err\n")


def test_a_warn_event_warns_on_the_client(client, link):
    message = {
        "message": pickle.dumps("careful"),
        "category": pickle.dumps(RuntimeWarning),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deliver(link, "warn", message)
        client.close()
    assert [(w.category, str(w.message)) for w in caught] == [
        (RuntimeWarning, "careful")
    ]


def test_a_tasks_client_has_no_print_handler():
    link = FakeLink(is_shared=True)
    client = Client(link=link, set_as_default=False)
    assert client._event_handlers == {}


def test_forward_logging_registers_the_plugin_and_handles_records_here(
    client, link, caplog
):
    client.forward_logging("user.module", level=logging.INFO)
    [subscribe] = link.of_type(rq.SubscribeTopic)
    [add] = link.of_type(rq.AddWorkerPlugin)
    assert add.name == "forward-logging-user.module"
    assert subscribe.topic == "forwarded-log-record-forward-logging-user.module"
    plugin = pickle.loads(add.plugin)
    assert isinstance(plugin, ForwardLoggingPlugin)
    assert (plugin.logger_name, plugin.level) == ("user.module", logging.INFO)
    record = logging.LogRecord(
        "user.module", logging.ERROR, "f.py", 1, "boom %d", (3,), None
    )
    attributes = {**record.__dict__, "msg": "boom 3", "args": None, "worker": "w0"}
    with caplog.at_level(logging.ERROR, logger="user.module"):
        deliver(link, subscribe.topic, attributes)
        client.close()
    [got] = [r for r in caplog.records if r.name == "user.module"]
    assert (got.getMessage(), got.worker) == ("boom 3", "w0")


def test_unforward_logging_unsubscribes_and_removes_the_plugin(client, link):
    client.forward_logging()
    client.unforward_logging()
    assert link.of_type(rq.SubscribeTopic)[-1].subscribe is False
    [remove] = link.of_type(rq.RemoveWorkerPlugin)
    assert remove.name == "forward-logging-<root>"


def test_logs_requests_carry_their_options(client, link):
    link.answers[rq.SchedulerLogs] = lambda r: [("WARNING", "x")]
    link.answers[rq.WorkerLogs] = lambda r: {"w": []}
    assert client.get_scheduler_logs(n=3) == [("WARNING", "x")]
    assert client.get_worker_logs(n=2, workers="w") == {"w": []}
    assert link.of_type(rq.SchedulerLogs) == [rq.SchedulerLogs(n=3)]
    assert link.of_type(rq.WorkerLogs) == [rq.WorkerLogs(n=2, workers=("w",))]
    with pytest.raises(ValueError, match="no nannies"):
        client.get_worker_logs(nanny=True)


def test_call_stack_asks_for_the_futures_keys_or_everything(client, link):
    link.answers[rq.CallStack] = lambda r: {}
    future = client.submit(len, "ab", key="k1")
    client.call_stack()
    client.call_stack([future], keys=["k0"])
    assert [r.keys for r in link.of_type(rq.CallStack)] == [None, ("k0", "k1")]


def test_profile_sends_its_selection_and_refuses_the_plot_options(client, link):
    link.answers[rq.Profile] = lambda r: {"count": 0}
    assert client.profile(key="inc", start=1.0, workers="w0") == {"count": 0}
    assert link.of_type(rq.Profile) == [
        rq.Profile(key="inc", start=1.0, workers=("w0",), merge_workers=True)
    ]
    for option in ("plot", "filename", "server", "scheduler"):
        with pytest.raises(ValueError, match=f"profile\\({option}=...\\)"):
            client.profile(**{option: "x"})
