"""Events, logs, prints, call stacks and the profile on a real cluster.

Every call is a typed request through the client's link, so each is also run
from inside a task where it makes sense (``log_event``, ``print``,
``subscribe_topic`` on a task's client).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from localsched import (
    Client,
    Event,
    SchedulerPlugin,
    get_client,
    get_worker,
)
from localsched import print as remote_print
from localsched import warn as remote_warn
from tests.runtime import helpers
from tests.runtime.helpers import DEADLINE

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def observed() -> Iterator[Client]:
    """A 2-worker client whose event thread runs already (so no test sees it
    start as a leak)."""
    with Client(n_workers=2, threads_per_worker=1, set_as_default=False) as client:
        client._deliver_event("warm-up", (0.0, None))  # no handler: ignored
        yield client


def _events(client: Client, topic: str, n: int = 1) -> tuple:
    events: tuple = ()

    def enough() -> bool:
        nonlocal events
        events = client.get_events(topic)
        return len(events) >= n

    assert helpers.poll(enough), f"{topic}: {events}"
    return events


def log_from_task(topic: str) -> str:
    get_client().log_event(topic, {"from": get_worker().address})
    return get_worker().address


def test_log_event_from_the_client_and_from_a_task(observed):
    observed.log_event(["obs-a", "obs-b"], {"n": 1})
    address = observed.submit(log_from_task, "obs-a", pure=False).result(DEADLINE)
    events = _events(observed, "obs-a", 2)
    assert [msg for _, msg in events] == [{"n": 1}, {"from": address}]
    assert [msg for _, msg in observed.get_events("obs-b")] == [{"n": 1}]
    assert {"obs-a", "obs-b"} <= set(observed.get_events())


def test_the_scheduler_logs_workers_and_clients_under_all(observed):
    actions = [msg["action"] for _, msg in observed.get_events("all")]
    assert actions.count("add-worker") == 2
    assert "add-client" in actions
    address = next(iter(observed.scheduler_info()["workers"]))
    assert observed.get_events(address)[0][1] == {"action": "add-worker"}


def test_subscribed_events_reach_the_handler_in_order(observed):
    seen: list[object] = []
    observed.subscribe_topic("obs-sub", lambda event: seen.append(event[1]))
    try:
        for i in range(5):
            observed.log_event("obs-sub", i)
        assert helpers.poll(lambda: len(seen) == 5)
    finally:
        observed.unsubscribe_topic("obs-sub")
    observed.log_event("obs-sub", "after")
    observed.log_event("obs-barrier", None)  # handled after "after" was sent
    assert seen == [0, 1, 2, 3, 4]


def subscribe_in_task(topic: str, ready: str) -> object:
    client = get_client()
    got: list[object] = []
    arrived = threading.Event()
    client.subscribe_topic(topic, lambda event: (got.append(event[1]), arrived.set()))
    Event(ready).set()
    arrived.wait(DEADLINE)
    client.unsubscribe_topic(topic)
    return got


def test_a_tasks_client_receives_the_events_it_subscribed_to(observed):
    future = observed.submit(subscribe_in_task, "obs-task", "obs-ready", pure=False)
    assert Event("obs-ready", client=observed).wait(DEADLINE)
    observed.log_event("obs-task", "to the task")
    assert future.result(DEADLINE) == ["to the task"]


def printing_task(text: str) -> int:
    remote_print(text, "err", file=sys.stderr)
    remote_print(text, 42)
    return 1


def test_print_in_a_task_prints_on_the_client(observed, capsys):
    observed.submit(printing_task, "obs-printed", pure=False).result(DEADLINE)
    out = err = ""

    def printed() -> bool:
        nonlocal out, err
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
        return "obs-printed 42" in out and "obs-printed err" in err

    assert helpers.poll(printed), (out, err)
    assert out.count("obs-printed 42") == 1


def warning_task() -> int:
    remote_warn("obs-careful", RuntimeWarning)
    return 1


def test_warn_in_a_task_warns_on_the_client(observed):
    def run_until_warned() -> bool:
        observed.submit(warning_task, pure=False).result(DEADLINE)
        return helpers.poll(
            lambda: any("obs-careful" in str(w.message) for w in record)
        )

    # pytest.warns records the warnings of every thread: the client's event
    # thread issues this one.
    with pytest.warns(RuntimeWarning, match="obs-careful") as record:
        assert run_until_warned()


def logging_task(message: str) -> int:
    logging.getLogger("obs.user").error(message)
    return 1


def test_forward_logging_handles_a_tasks_records_on_the_client(observed, caplog):
    observed.forward_logging("obs.user")
    try:
        with caplog.at_level(logging.ERROR, logger="obs.user"):
            observed.submit(logging_task, "obs-forwarded", pure=False).result(DEADLINE)
            assert helpers.poll(
                lambda: any(r.getMessage() == "obs-forwarded" for r in caplog.records)
            )
    finally:
        observed.unforward_logging("obs.user")
    [record] = [r for r in caplog.records if r.getMessage() == "obs-forwarded"]
    assert record.name == "obs.user"
    assert record.worker in observed.scheduler_info()["workers"]


def test_worker_logs_hold_each_workers_start(observed):
    logs = observed.get_worker_logs()
    assert set(logs) == set(observed.scheduler_info()["workers"])
    for address, records in logs.items():
        assert any(
            level == "INFO" and f"Worker {address} " in text for level, text in records
        )
    one = next(iter(logs))
    assert list(observed.get_worker_logs(n=1, workers=[one])) == [one]
    assert len(observed.get_worker_logs(n=1, workers=[one])[one]) == 1


def test_scheduler_logs_hold_the_records_of_the_clusters_process(observed):
    logging.getLogger("localsched.obs-test").warning("obs-scheduler-record")
    [(level, text)] = observed.get_scheduler_logs(n=1)
    assert level == "WARNING"
    assert text.endswith("localsched.obs-test - WARNING - obs-scheduler-record")


def blocked(name: str) -> int:
    Event(name).wait(DEADLINE)
    return 1


def test_call_stack_shows_where_a_stuck_task_waits(observed):
    future = observed.submit(blocked, "obs-stuck", pure=False)
    after = observed.submit(lambda x: x, future, pure=False)
    try:
        stacks: dict = {}

        def running() -> bool:
            nonlocal stacks
            stacks = observed.call_stack([after])  # waits on `future`
            return bool(stacks)

        assert helpers.poll(running)
        [(address, by_key)] = stacks.items()
        assert list(by_key) == [future.key]
        first = by_key[future.key][0]
        assert "in blocked" in first
        assert "Event(name).wait(DEADLINE)" in first
        assert address in observed.nthreads()
        assert future.key in observed.call_stack()[address]
    finally:
        Event("obs-stuck", client=observed).set()
    assert after.result(DEADLINE) == 1
    assert helpers.poll(lambda: observed.call_stack() == {})


def spin(seconds: float) -> int:
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


def test_profile_counts_samples_of_a_prefix(observed):
    started = time.time()
    observed.submit(spin, 0.4, pure=False).result(DEADLINE)
    tree = observed.profile(key="spin", start=started - 1)
    assert tree["count"] >= 5  # 10 ms samples over 0.4 s
    names = [child["description"]["name"] for child in tree["children"].values()]
    assert names == ["spin"]
    assert observed.profile(key="no-such-prefix")["count"] == 0
    per_worker = observed.profile(key="spin", merge_workers=False)
    assert set(per_worker) == set(observed.scheduler_info()["workers"])
    assert (
        sum(t["count"] for t in per_worker.values())
        == observed.profile(key="spin")["count"]
    )


class EventRecorder(SchedulerPlugin):
    name = "obs-recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def log_event(self, topic, msg):
        if topic.startswith("obs-"):
            self.seen.append((topic, msg))


def test_scheduler_plugins_see_logged_events(observed):
    plugin = EventRecorder()
    observed.register_plugin(plugin)
    try:
        observed.log_event("obs-plugin", 7)
        observed.submit(log_from_task, "obs-plugin", pure=False).result(DEADLINE)
        assert helpers.poll(lambda: len(plugin.seen) == 2)
    finally:
        observed.unregister_scheduler_plugin("obs-recorder")
    assert plugin.seen[0] == ("obs-plugin", 7)
