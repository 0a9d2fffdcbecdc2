"""The scheduler's event log (dask's ``Broker``), without a cluster."""

from __future__ import annotations

from localsched.plugins import SchedulerPlugin
from localsched.runtime.event_log import EventLog
from localsched.scheduler.scheduler import Scheduler


def test_each_topic_keeps_its_last_events_oldest_first():
    log = EventLog(lambda *a: None, maxlen=3)
    for i in range(5):
        log.publish(["t"], i)
    log.publish(["u", "t"], "both")
    assert [msg for _, msg in log.get_events("t")] == [3, 4, "both"]
    assert [msg for _, msg in log.get_events("u")] == ["both"]
    assert log.get_events("none") == ()
    assert set(log.get_events()) == {"t", "u"}
    assert log.counts == {"t": 6, "u": 1}
    times = [when for when, _ in log.get_events("t")]
    assert times == sorted(times)


def test_subscribers_receive_each_event_of_their_topics():
    sent = []
    log = EventLog(lambda client, topic, event: sent.append((client, topic, event[1])))
    log.subscribe("t", "c1")
    log.subscribe("t", "c2")
    log.subscribe("u", "c1")
    log.publish(["t"], 1)
    log.unsubscribe("t", "c2")
    log.publish(["t", "u"], 2)
    log.forget_client("c1")
    log.publish(["t", "u"], 3)
    assert sorted(sent) == [
        ("c1", "t", 1),
        ("c1", "t", 2),
        ("c1", "u", 2),
        ("c2", "t", 1),
    ]
    assert log.subscribers == {}


def test_a_failing_delivery_does_not_stop_the_others():
    sent = []

    def deliver(client, topic, event):
        if client == "bad":
            raise OSError("gone")
        sent.append(client)

    log = EventLog(deliver)
    log.subscribe("t", "bad")
    log.subscribe("t", "good")
    log.publish(["t"], 1)
    assert sent == ["good"]


class _Recorder(SchedulerPlugin):
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def log_event(self, topic, msg):
        self.seen.append((topic, msg))


def test_scheduler_log_event_records_and_calls_the_plugins_hook():
    scheduler = Scheduler()
    plugin = _Recorder()
    scheduler.add_plugin(plugin)
    assert scheduler.get_events("t") == ()  # no runtime: nothing kept
    scheduler.event_log = EventLog(lambda *a: None)
    scheduler.log_event(["t", "u"], {"x": 1})
    scheduler.subscribe_topic("t", "c")
    assert plugin.seen == [("t", {"x": 1}), ("u", {"x": 1})]
    assert [msg for _, msg in scheduler.get_events("t")] == [{"x": 1}]
    assert scheduler.event_log.subscribers == {"t": {"c"}}
    scheduler.unsubscribe_topic("t", "c")
    assert scheduler.event_log.subscribers == {}
