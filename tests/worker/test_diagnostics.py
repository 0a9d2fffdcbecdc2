"""A worker's logs, call stacks and profile, in-process (no worker process)."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from localsched.plugins import ForwardLoggingPlugin
from localsched.worker import context
from localsched.worker.diagnostics import (
    LogRing,
    Profiler,
    call_stacks,
    create,
    merge,
)
from localsched.worker.execute import run_task

DEADLINE = 10.0


def test_the_log_ring_answers_newest_first_and_stays_bounded():
    ring = LogRing(maxlen=3)
    log = logging.getLogger("localsched.test-ring")
    log.setLevel(logging.INFO)
    detach = ring.install(log)
    try:
        for i in range(5):
            log.info("message %d", i)
    finally:
        detach()
    log.info("not kept")
    logs = ring.get_logs()
    assert [level for level, _ in logs] == ["INFO"] * 3
    assert [text.rsplit(" - ", 1)[1] for _, text in logs] == [
        "message 4",
        "message 3",
        "message 2",
    ]
    assert " - localsched.test-ring - INFO - " in logs[0][1]
    assert len(ring.get_logs(n=2)) == 2
    created, level, _ = ring.get_logs(n=1, timestamps=True)[0]
    assert (level, created > 0) == ("INFO", True)
    assert ring.get_logs(start=created + 1) == []


def _blocked_task(started: threading.Event, release: threading.Event) -> None:
    started.set()
    release.wait(DEADLINE)


def _run_in_thread(target, *args):
    """Run ``target`` as a worker's task thread does (through ``run_task``)."""
    thread = threading.Thread(target=run_task, args=(target, args, {}, {}))
    thread.start()
    return thread


def test_a_call_stack_starts_at_the_tasks_function():
    started, release = threading.Event(), threading.Event()
    thread = _run_in_thread(_blocked_task, started, release)
    try:
        assert started.wait(DEADLINE)
        stacks = call_stacks({"k": thread.ident, "gone": -1})
        other = call_stacks({"k": thread.ident}, keys=["other"])
    finally:
        release.set()
        thread.join(DEADLINE)
    assert list(stacks) == ["k"]
    first, *rest = stacks["k"]
    assert "in _blocked_task" in first
    assert "release.wait(DEADLINE)" in first
    assert "run_task" not in "".join(stacks["k"])
    assert any("in wait" in line for line in rest)  # threading.Event.wait
    assert other == {}


def test_the_profiler_counts_samples_per_key_prefix():
    started, release = threading.Event(), threading.Event()
    thread = _run_in_thread(_blocked_task, started, release)
    threads = {("inc-1", 0): thread.ident}
    profiler = Profiler(lambda: threads, lambda key: key[0].split("-")[0])
    try:
        assert started.wait(DEADLINE)
        for _ in range(3):
            assert profiler.sample()
    finally:
        release.set()
        thread.join(DEADLINE)
    threads.clear()
    assert not profiler.sample()
    tree = profiler.get_profile(key="inc")
    assert tree["count"] == 3
    [(identifier, child)] = tree["children"].items()
    assert identifier.startswith("_blocked_task;")
    assert child["count"] == 3
    assert child["description"]["name"] == "_blocked_task"
    assert profiler.get_profile(key="other") == create()
    assert profiler.get_profile()["count"] == 3


def test_a_task_still_being_loaded_has_no_stack_and_no_samples():
    """Its thread is not inside ``run_task`` yet (unpickling the function may
    import modules): dask loads a task before a thread runs it, so neither its
    call stacks nor its profiles show that phase."""
    started, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_blocked_task, args=(started, release))
    thread.start()
    threads = {("inc-1", 0): thread.ident}
    profiler = Profiler(lambda: threads, lambda key: key[0].split("-")[0])
    try:
        assert started.wait(DEADLINE)
        stacks = call_stacks({"k": thread.ident})
        profiler.sample()
    finally:
        release.set()
        thread.join(DEADLINE)
    assert stacks == {}
    assert profiler.get_profile(key="inc")["count"] == 0


def test_merge_adds_the_counts_of_equal_frames():
    a = {
        **create(),
        "count": 2,
        "children": {"f": {**create(), "identifier": "f", "count": 2}},
    }
    b = {
        **create(),
        "count": 1,
        "children": {"f": {**create(), "identifier": "f", "count": 1}},
    }
    merged = merge(a, b)
    assert (merged["count"], merged["children"]["f"]["count"]) == (3, 3)
    assert merge() == create()


class _FakeWorker:
    address = "local://1/0"

    def __init__(self) -> None:
        self.events: list[tuple[object, object]] = []

    def log_event(self, topic, msg):
        self.events.append((topic, msg))


def test_the_forwarding_plugin_sends_each_record_as_plain_attributes():
    worker = _FakeWorker()
    plugin = ForwardLoggingPlugin("user.fwd", logging.WARNING, "topic")
    log = logging.getLogger("user.fwd")
    plugin.setup(worker)
    try:
        log.warning("hello %s", object.__name__)
        log.info("below the plugin's level")
    finally:
        plugin.teardown(worker)
    log.warning("after teardown")
    [(topic, attributes)] = worker.events
    assert topic == "topic"
    assert (attributes["msg"], attributes["args"]) == ("hello object", None)
    assert (attributes["name"], attributes["worker"]) == ("user.fwd", "local://1/0")
    assert logging.makeLogRecord(attributes).getMessage() == "hello object"


def test_print_and_warn_outside_a_task_are_the_builtins(capsys):
    context.print("a", "b", sep="-")
    with pytest.warns(UserWarning, match="plain"):
        context.warn("plain")
    assert capsys.readouterr().out == "a-b\n"


def test_print_and_warn_in_a_task_log_events_instead(capsys):
    worker = _FakeWorker()
    context.thread_state.worker = worker
    try:
        context.print("x", 1, file=sys.stderr, end="")
        context.warn("w", RuntimeWarning)
        with pytest.raises(TypeError, match="arbitrary file objects"):
            context.print("x", file=object())  # type: ignore[arg-type]
    finally:
        context.thread_state.worker = None
    assert capsys.readouterr() == ("", "")
    (print_topic, printed), (warn_topic, warned) = worker.events
    assert print_topic == "print"
    assert printed == {
        "args": ("x", "1"),
        "sep": " ",
        "end": "",
        "flush": False,
        "file": 2,
    }
    assert warn_topic == "warn"
    assert set(warned) == {"message", "category"}


def test_the_log_ring_keeps_pythons_last_resort_for_warnings(capsys):
    # A handler on "localsched" would otherwise stop Python's last resort: a
    # worker's death or memory pressure would no longer reach stderr.
    import logging

    from localsched.worker.diagnostics import LogRing

    logger = logging.getLogger("localsched-test-ring")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # away from pytest's own capturing handlers
    ring = LogRing()
    detach = ring.install(logger)
    try:
        logger.warning("worker died: SIGKILL")
        logger.info("quiet")
    finally:
        detach()
    err = capsys.readouterr().err
    assert "worker died: SIGKILL" in err
    assert "quiet" not in err
    assert [r.getMessage() for r in ring.records] == ["worker died: SIGKILL", "quiet"]
