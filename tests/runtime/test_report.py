"""performance_report and get_task_stream(plot=...): what is recorded, what is drawn.

The pages are opened in a real headless browser (``tests/browser.py``): no
console errors, one bar per task run in the task stream, the numbers shown
are the scheduler's.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
import sys

import pytest

from localsched import Client, get_task_stream, performance_report
from localsched.client.report import records_of, summary_of
from localsched.transport import requests as rq
from tests.browser import open_page, requires_chromium
from tests.runtime.helpers import (
    DEADLINE,
    kill_own_process,
    make_bytes,
    poll,
    raise_value_error,
    report_from_task,
)

#: Reads the task stream's source once bokeh has drawn the page.
PROBE = """
(function probe(tries) {
  const root = document.documentElement;
  const docs = (window.Bokeh && Bokeh.documents) || [];
  if (!docs.length || !docs[0].is_idle) {
    if (tries > 0) setTimeout(() => probe(tries - 1), 50);
    else root.setAttribute("data-probe", JSON.stringify({error: "not drawn"}));
    return;
  }
  const source = docs[0].get_model_by_name("task-stream");
  root.setAttribute("data-probe", JSON.stringify({
    roots: docs[0].roots().length,
    views: [...Bokeh.index].filter((view) => view.el.isConnected).length,
    keys: Array.from(source.data.key),
    actions: Array.from(source.data.action),
  }));
})(400);
"""


def _record(client: Client, work) -> rq.RecordingData:
    session = client._ask(rq.StartRecording())
    try:
        work()
    finally:
        data = client._ask(rq.StopRecording(session=session))
    return data


def _runtime(client: Client):
    return client.cluster.runtime


# -- what is recorded -----------------------------------------------------------------


def test_recording_holds_each_task_run_with_its_thread_and_input_load(client):
    def work():
        xs = client.map(make_bytes, [100_000] * 4, range(4), pure=False)
        total = client.submit(lambda *parts: sum(map(len, parts)), *xs, pure=False)
        assert total.result() == 400_000
        bad = client.submit(raise_value_error, 1, pure=False)
        with pytest.raises(ValueError, match="bad 1"):
            bad.result()
        work.keys = [f.key for f in (*xs, total, bad)]

    data = _record(client, work)
    records = records_of(data)
    by_key = {r["key"]: r for r in records["tasks"]}
    assert sorted(map(str, by_key)) == sorted(map(str, work.keys))
    assert len(records["tasks"]) == len(work.keys)  # one entry per run
    workers = set(client.scheduler.workers)
    for record in records["tasks"]:
        assert record["worker"] in workers
        assert isinstance(record["thread"], int)
        assert record["thread"] != 0
        compute = record["startstops"][-1]
        assert compute["action"] == "compute"
        assert data.start <= compute["start"] <= compute["stop"] <= data.stop
    total = by_key[work.keys[4]]
    load, compute = total["startstops"]  # it loaded four results from shm
    assert load["action"] == "transfer"
    assert load["start"] <= load["stop"] == compute["start"]
    assert all(len(by_key[k]["startstops"]) == 1 for k in work.keys[:4])
    assert by_key[work.keys[0]]["nbytes"] >= 100_000
    bad = by_key[work.keys[5]]
    assert bad["status"] == "error"
    assert "bad 1" in bad["exception_text"]
    assert len(records["memory"]) >= 2  # as the block began and ended
    assert set(records["memory"][-1]["unmanaged"]) == workers
    assert set(records["workers"]) >= workers
    assert all(w["nthreads"] == 1 for w in records["workers"].values())


def test_recording_turns_off_with_the_last_of_overlapping_sessions(client):
    runtime = _runtime(client)
    outer = client._ask(rq.StartRecording())
    client.submit(operator.neg, 1, pure=False).result()
    inner = client._ask(rq.StartRecording())
    second = client.submit(operator.neg, 2, pure=False)
    second.result()
    inner_data = client._ask(rq.StopRecording(session=inner))
    assert runtime.recorder is not None  # the outer session still records
    outer_data = client._ask(rq.StopRecording(session=outer))
    assert runtime.recorder is None
    assert [t[0] for t in inner_data.tasks] == [second.key]
    assert len(outer_data.tasks) == 2
    with pytest.raises(KeyError, match="no recording session"):
        client._ask(rq.StopRecording(session=outer))


def test_recording_names_the_cause_of_a_worker_death():
    with Client(n_workers=1, threads_per_worker=1) as own:
        session = own._ask(rq.StartRecording())
        doomed = own.submit(kill_own_process, pure=False)
        assert poll(lambda: doomed.status != "pending" or _restarted(own))
        own.wait_for_workers(1, timeout=DEADLINE)
        data = own._ask(rq.StopRecording(session=session))
    events = records_of(data)["events"]
    kinds = [e["kind"] for e in events]
    assert "died" in kinds
    died = events[kinds.index("died")]
    assert "SIGKILL" in died["detail"] or "signal 9" in died["detail"]
    assert "added" in kinds[kinds.index("died") :]  # its replacement joined


def _restarted(client: Client) -> bool:
    return len(client.scheduler.workers) == 1 and any(
        e[1] == "added" for e in _runtime(client).recorder.events
    )


# -- the report -----------------------------------------------------------------------


def test_performance_report_is_one_offline_page_drawing_every_task(client, tmp_path):
    path = tmp_path / "report.html"
    finished = _runtime(client).tasks_finished
    with performance_report(filename=str(path)):
        xs = client.map(operator.neg, range(30), pure=False)
        ys = [
            client.submit(operator.add, a, b, pure=False)
            for a, b in itertools.pairwise(xs)
        ]
        client.gather(ys)
        bad = client.submit(raise_value_error, 2, pure=False)
        with pytest.raises(ValueError, match="bad 2"):
            bad.result()
    runs = _runtime(client).tasks_finished - finished + 1  # + the one that raised
    page = path.read_text()
    # Self-contained: no script, style or link fetched from anywhere.
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)
    assert "performance_report(filename=str(path))" in page  # the calling code
    summary = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", page))
    assert int(summary["tasks"]) == runs == 60
    assert int(summary["errors"]) == 1
    assert int(summary["threads"]) == client.scheduler.total_nthreads
    prefixes = re.search(r'<table id="prefixes">.*?</table>', page, re.S).group(0)
    counts = dict(re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td>", prefixes))
    assert counts == {"neg": "30", "add": "29", "raise_value_error": "1"}


@requires_chromium
def test_report_opens_in_a_browser_without_errors_one_bar_per_run(client, tmp_path):
    path = tmp_path / "report.html"
    with performance_report(filename=str(path)):
        xs = client.map(make_bytes, [70_000] * 6, pure=False)
        total = client.submit(lambda *parts: len(parts), *xs, pure=False)
        assert total.result() == 6
        keys = [str(f.key) for f in (*xs, total)]
    page = open_page(path, PROBE)
    assert json.loads(page.errors) == []
    assert all(line.startswith('"[bokeh ') for line in page.console), page.console
    drawn = json.loads(page.attribute("data-probe"))
    assert drawn["roots"] == 3  # task stream, progress, memory
    assert drawn["views"] >= 3
    bars = list(zip(drawn["keys"], drawn["actions"], strict=True))
    computes = [k for k, a in bars if a == "compute"]
    assert sorted(computes) == sorted(keys)
    loads = [k for k, a in bars if a != "compute"]
    assert loads == [keys[-1]]  # the task that read six results from shm


def test_performance_report_from_inside_a_task(client, tmp_path):
    path = tmp_path / "inner.html"
    assert client.submit(report_from_task, str(path), 5, pure=False).result() == -10
    page = path.read_text()
    summary = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", page))
    assert int(summary["tasks"]) == 5


def test_summary_counts_threads_of_workers_present_and_busy_time():
    records = {
        "start": 100.0,
        "stop": 110.0,
        "tasks": [
            {
                "key": "a-1",
                "status": "OK",
                "startstops": [{"action": "compute", "start": 101.0, "stop": 106.0}],
            }
        ],
        "events": [{"time": 105.0, "kind": "died", "worker": "w/1", "detail": ""}],
        "workers": {
            "w/0": {"nthreads": 2, "memory_limit": 0, "name": 0},
            "w/1": {"nthreads": 1, "memory_limit": 0, "name": 1},
        },
    }
    summary = summary_of(records)
    assert summary["tasks"] == 1
    assert summary["threads"] == 3
    # 5 s busy out of 2 threads x 10 s + 1 thread x 5 s
    assert summary["busy"] == pytest.approx(5 / 25)
    assert summary["tasks_per_second"] == pytest.approx(0.1)


# -- the task stream as a picture ---------------------------------------------------


def test_get_task_stream_plot_returns_and_saves_the_figure(client, tmp_path):
    client.get_task_stream()  # starts the task stream plugin
    futures = client.map(operator.neg, range(8), pure=False)
    client.gather(futures)
    path = tmp_path / "stream.html"
    records, figure = client.get_task_stream(count=8, plot="save", filename=str(path))
    assert sorted(r["key"] for r in records) == sorted(f.key for f in futures)
    source = figure.select_one({"name": "task-stream"})
    assert sorted(source.data["key"]) == sorted(str(f.key) for f in futures)
    # Without threads in the records, rows pack each worker's tasks: one
    # thread each here, so one row per worker.
    assert set(source.data["row"]) <= {"worker 0 · thread 0", "worker 1 · thread 0"}
    page = path.read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)


def test_get_task_stream_context_draws_its_block(client, tmp_path):
    path = tmp_path / "block.html"
    with get_task_stream(client, plot="save", filename=str(path)) as ts:
        futures = client.map(operator.neg, range(4), pure=False)
        client.gather(futures)
    assert sorted(r["key"] for r in ts.data) == sorted(f.key for f in futures)
    source = ts.figure.select_one({"name": "task-stream"})
    assert sorted(source.data["key"]) == sorted(str(f.key) for f in futures)
    assert path.exists()
    assert _runtime(client).recorder is None


def test_without_bokeh_the_calls_name_the_extra(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "bokeh", None)  # import bokeh fails
    for name in [m for m in sys.modules if m.startswith("bokeh.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "localsched.diagnostics.figures", raising=False)
    monkeypatch.delattr(sys.modules["localsched.diagnostics"], "figures", raising=False)
    report = performance_report()
    with pytest.raises(ImportError, match=r"localsched\[dashboard\]"):
        report.__enter__()
    with pytest.raises(ImportError, match=r"localsched\[dashboard\]"):
        client.get_task_stream(plot=True)
    with pytest.raises(ImportError, match=r"localsched\[dashboard\]"):
        get_task_stream(client, plot=True)
    assert _runtime(client).recorder is None  # nothing was left recording


# -- pure parts ----------------------------------------------------------------------


def _task(key, worker, start, stop, **more):
    return {
        "key": key,
        "worker": worker,
        "status": "OK",
        "startstops": [{"action": "compute", "start": start, "stop": stop}],
        **more,
    }


def test_rows_without_threads_pack_as_many_as_ran_at_once():
    from localsched.diagnostics.figures import task_stream_rows

    records = [
        _task("a-1", "w/0", 0.0, 2.0),
        _task("a-2", "w/0", 1.0, 3.0),  # overlaps a-1: a second row
        _task("a-3", "w/0", 2.0, 4.0),  # starts as a-1 ends: a-1's row
        _task("a-4", "w/1", 0.0, 9.0),
    ]
    assert task_stream_rows(records) == [("w/0", 0), ("w/0", 1), ("w/0", 0), ("w/1", 0)]
    threaded = [_task("b-1", "w/0", 0.0, 1.0, thread=77)]
    assert task_stream_rows(threaded) == [("w/0", 77)]


def test_prefix_table_sums_durations_errors_and_result_bytes():
    from localsched.diagnostics.figures import prefix_table

    records = [
        _task("x-1", "w/0", 0.0, 2.0, nbytes=10),
        _task("x-2", "w/0", 2.0, 3.0, nbytes=5),
        {**_task("y-1", "w/0", 0.0, 0.5), "status": "error", "nbytes": 99},
    ]
    x, y = prefix_table(records)
    assert x == {
        "prefix": "x",
        "count": 2,
        "total": 3.0,
        "mean": 1.5,
        "errors": 0,
        "nbytes": 15,
    }
    assert (y["prefix"], y["errors"], y["nbytes"]) == ("y", 1, 0)


def test_memory_decisions_are_recorded_as_events():
    from localsched.runtime.memory import MemoryDecision, _record
    from localsched.runtime.recording import Recorder

    recorder = Recorder(runtime=None)  # the event taps need no runtime
    decision = MemoryDecision(
        spill=2048,
        budget=1000,
        pause={"w/0": "over 80%"},
        resume=["w/1"],
        terminate={"w/2": "over 95%"},
        restart={"w/3": "paused too long"},
    )
    _record(recorder, decision)
    assert recorder.budget == 1000
    assert [(kind, worker, detail) for _, kind, worker, detail in recorder.events] == [
        ("paused", "w/0", "over 80%"),
        ("resumed", "w/1", ""),
        ("terminated", "w/2", "over 95%"),
        ("restarting", "w/3", "paused too long"),
        ("spilled", "", "up to 2.00 kiB"),
    ]
