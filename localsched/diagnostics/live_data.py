"""The data behind the live views: the web dashboard and the notebook panel.

One :class:`LiveData` per cluster view. ``refresh()`` takes a :class:`LiveSample`
on the scheduler thread (``runtime.call``) and folds it into bounded histories
kept on the caller's side::

    scheduler thread                         dashboard / panel thread
    take_sample(): workers, prefix counters,  LiveData.refresh(): task rects
    task-stream records since a cursor,  ──▶  (lanes per worker), events,
    events since a cursor                     worker RSS (psutil)
                                              ──▶ *_columns(): dicts of columns

A sample costs O(workers + prefixes + records new since the last sample): it
reads counters and the task stream plugin's buffer from a cursor, never every
task. Samples are shared: a refresh within ``min_interval`` of the last one
returns at once, so several browser tabs or data sources polling together
cost one sample.

The ``*_columns`` methods return plain ``{column: list}`` dicts, the shape of a
bokeh ``ColumnDataSource``: the web dashboard serves them as JSON to
``AjaxDataSource``s, the notebook panel draws them as HTML.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from localsched.plugins import SchedulerPlugin

#: Task rectangles the task stream keeps (the most recent).
TASK_STREAM_WINDOW = 2000
#: Events the events page keeps.
EVENTS_KEPT = 1000
#: Name of the recorder plugin on the scheduler.
RECORDER_PLUGIN = "localsched-live-events"
#: Task states whose tasks are finished, for progress.
DONE_STATES = ("memory", "released")
#: Colours of task prefixes (bokeh's Category10 and then some).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
)
ERROR_COLOUR = "#d62728"


class EventRecorder(SchedulerPlugin):
    """Keeps the cluster's recent events for the events page (scheduler thread).

    Workers joining and leaving, restarts and every ``log_event``. ``index``
    counts every event ever recorded: a cursor for :func:`take_sample`.
    """

    name = RECORDER_PLUGIN

    def __init__(self) -> None:
        self.events: deque[tuple[float, str, str]] = deque(maxlen=EVENTS_KEPT)
        self.index = 0

    def _record(self, topic: str, message: str) -> None:
        self.events.append((time.time(), topic, message))
        self.index += 1

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        self._record("worker-added", f"{getattr(ws, 'name', worker)} ({worker})")

    def remove_worker(
        self, scheduler: Any, worker: str, *, stimulus_id: str, **kwargs: Any
    ) -> None:
        self._record("worker-removed", f"{worker} ({stimulus_id})")

    def restart(self, scheduler: Any) -> None:
        self._record("restart", "the scheduler restarted")

    def log_event(self, topic: str, msg: Any) -> None:
        self._record(str(topic), str(msg))


@dataclass
class WorkerSample:
    """One worker as a sample sees it."""

    address: str
    name: str
    pid: int
    nthreads: int
    status: str
    processing: int
    executing: int
    in_memory: int
    #: Bytes of the results it holds (managed memory, in shared memory).
    nbytes: int
    memory_limit: int
    #: Unmanaged memory: its process's anonymous resident bytes (RSS minus
    #: shared pages, as the memory monitor counts), -1 if unknown.
    unmanaged: int = -1


@dataclass
class LiveSample:
    """What one visit to the scheduler thread returns."""

    time: float
    workers: list[WorkerSample]
    #: prefix -> state -> count (not forgotten tasks).
    prefixes: dict[str, dict[str, int]]
    #: Task stream records appended since the cursor (``get_task_stream`` shape).
    records: list[dict[str, Any]]
    stream_index: int
    events: list[tuple[float, str, str]]
    event_index: int
    spilled_bytes: int = 0


def take_sample(
    scheduler: Any,
    stream: Any,
    recorder: EventRecorder,
    stream_index: int,
    event_index: int,
    store: Any = None,
) -> LiveSample:
    """Read the scheduler's counters and what is new since the cursors.

    Runs on the scheduler thread; O(workers + prefixes + new records).
    """
    workers = [
        WorkerSample(
            address=ws.address,
            name=str(ws.name),
            pid=ws.pid,
            nthreads=ws.nthreads,
            status=ws.status,
            processing=len(ws.processing),
            executing=ws.executing_count,
            in_memory=len(ws.has_what),
            nbytes=ws.nbytes,
            memory_limit=ws.memory_limit,
        )
        for ws in scheduler.workers.values()
    ]
    prefixes: dict[str, dict[str, int]] = {}
    for name, prefix in scheduler.task_prefixes.items():
        states = {s: n for s, n in prefix.states.items() if n and s != "forgotten"}
        if states:
            prefixes[name] = states
    new_events = recorder.index - event_index
    events = list(recorder.events)[-new_events:] if new_events > 0 else []
    return LiveSample(
        time=time.time(),
        workers=workers,
        prefixes=prefixes,
        records=stream.collect(start_index=stream_index),
        stream_index=stream.index,
        events=events,
        event_index=recorder.index,
        spilled_bytes=getattr(store, "spilled_bytes", 0),
    )


@dataclass
class _Lanes:
    """Rows of one worker in the task stream: one per thread it ran tasks on."""

    ends: list[float] = field(default_factory=list)

    def place(self, start: float, stop: float) -> int:
        # Records arrive in the order tasks finished, not started: take the
        # lane that became free last before ``start`` (best fit), so a thread's
        # next task lands behind its previous one and lanes stay one per thread.
        best, best_end = -1, -1.0
        for lane, end in enumerate(self.ends):
            if best_end < end <= start + 1e-6:
                best, best_end = lane, end
        if best < 0:
            self.ends.append(stop)
            return len(self.ends) - 1
        self.ends[best] = stop
        return best


def key_prefix(key: Any) -> str:
    """``inc`` of ``"inc-3f2a..."`` or ``("inc-3f2a...", 0)`` (dask's ``key_split``)."""
    from localsched.scheduler.tasks import key_split

    return str(key_split(key))


class LiveData:
    """Histories and columns of one cluster's live view; thread-safe.

    Parameters
    ----------
    cluster
        The ``LocalCluster`` (same process).
    min_interval
        Seconds during which a sample is reused instead of taking another.
    """

    def __init__(self, cluster: Any, min_interval: float = 0.2) -> None:
        self.cluster = cluster
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._recorder = EventRecorder()
        self._stream: Any = None
        self._stream_index = 0
        self._event_index = 0
        self._last: LiveSample | None = None
        self._sampled_at = 0.0
        #: (start, stop, worker, row, key, prefix, status) of recent tasks.
        self.tasks: deque[tuple[float, float, str, int, str, str, str]] = deque(
            maxlen=TASK_STREAM_WINDOW
        )
        self.events: deque[tuple[float, str, str]] = deque(maxlen=EVENTS_KEPT)
        self._lanes: dict[str, _Lanes] = {}
        #: (worker, lane) -> row number in the task stream, in order of appearance.
        self._rows: dict[tuple[str, int], int] = {}
        self._colours: dict[str, str] = {}
        #: Tasks seen in the task stream since the view started.
        self.tasks_seen = 0

    # -- lifecycle (any thread but the scheduler's) ---------------------------------

    def start(self) -> None:
        """Register the task stream and the event recorder on the scheduler."""
        from localsched.runtime.task_stream import task_stream_plugin

        scheduler = self.cluster.scheduler

        def attach() -> Any:
            stream = task_stream_plugin(scheduler)
            if RECORDER_PLUGIN not in scheduler.plugins:
                scheduler.add_plugin(self._recorder, name=RECORDER_PLUGIN)
            else:
                self._recorder = scheduler.plugins[RECORDER_PLUGIN]
            # Workers that joined before the view started are events too.
            if self._recorder.index == 0:
                for address in scheduler.workers:
                    self._recorder.add_worker(scheduler, address)
            return stream

        self._stream = self.cluster.runtime.call(attach).result(timeout=10.0)
        # What the stream recorded before (another view, get_task_stream) shows too.
        self._stream_index = max(0, self._stream.index - TASK_STREAM_WINDOW)

    # -- sampling -------------------------------------------------------------------

    def refresh(self) -> LiveSample | None:
        """A recent sample (None once the cluster stopped and nothing was seen)."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._sampled_at < self.min_interval:
                return self._last
            runtime = self.cluster.runtime
            if self._stream is None or not runtime.is_running:
                return self._last
            scheduler, store = self.cluster.scheduler, self.cluster.store
            stream, recorder = self._stream, self._recorder
            stream_index, event_index = self._stream_index, self._event_index
            try:
                sample: LiveSample = runtime.call(
                    lambda: take_sample(
                        scheduler, stream, recorder, stream_index, event_index, store
                    )
                ).result(timeout=5.0)
            except Exception:  # the cluster closed meanwhile
                return self._last
            self._fold(sample)
            self._last, self._sampled_at = sample, now
            return sample

    def _fold(self, sample: LiveSample) -> None:
        import psutil

        self._stream_index, self._event_index = sample.stream_index, sample.event_index
        for record in sample.records:
            self._add_task(record)
        self.events.extend(sample.events)
        for row in sample.workers:
            with contextlib.suppress(psutil.Error, ValueError):
                if row.pid:
                    info = psutil.Process(row.pid).memory_info()
                    row.unmanaged = max(0, info.rss - getattr(info, "shared", 0))

    def _add_task(self, record: dict[str, Any]) -> None:
        worker = str(record.get("worker"))
        key = record["key"]
        prefix = key_prefix(key)
        for part in record["startstops"]:
            start, stop = part["start"], part["stop"]
            lane = self._lanes.setdefault(worker, _Lanes()).place(start, stop)
            row = self._rows.setdefault((worker, lane), len(self._rows))
            self.tasks.append(
                (start, stop, worker, row, str(key), prefix, record["status"])
            )
        self.tasks_seen += 1

    def colour(self, prefix: str) -> str:
        colour = self._colours.get(prefix)
        if colour is None:
            colour = PALETTE[len(self._colours) % len(PALETTE)]
            self._colours[prefix] = colour
        return colour

    # -- columns (after refresh) ----------------------------------------------------

    def task_stream_columns(self, seconds: float | None = None) -> dict[str, list[Any]]:
        """One rectangle per task run: x in ms since the epoch, y a row number
        (one per worker thread, in order of appearance)."""
        sample = self.refresh()
        names = {w.address: w.name for w in sample.workers} if sample else {}
        with self._lock:
            tasks = list(self.tasks)
            lanes = {row: lane for (_, lane), row in self._rows.items()}
        if seconds is not None and tasks:
            since = time.time() - seconds
            tasks = [t for t in tasks if t[1] >= since]
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "start",
                "duration",
                "middle",
                "row",
                "lane",
                "worker",
                "key",
                "prefix",
                "colour",
                "status",
            )
        }
        for start, stop, worker, row, key, prefix, status in tasks:
            name = names.get(worker, worker)
            columns["start"].append(start * 1000)
            columns["duration"].append((stop - start) * 1000)
            columns["middle"].append((start + stop) * 500)
            columns["row"].append(row)
            columns["lane"].append(f"{name}, thread {lanes.get(row, 0)}")
            columns["worker"].append(name)
            columns["key"].append(key)
            columns["prefix"].append(prefix)
            columns["colour"].append(
                ERROR_COLOUR if status == "error" else self.colour(prefix)
            )
            columns["status"].append(status)
        return columns

    def progress_columns(self) -> dict[str, list[Any]]:
        """One row per prefix: total, done, erred, processing, waiting."""
        sample = self.refresh()
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "index",
                "prefix",
                "total",
                "done",
                "erred",
                "processing",
                "waiting",
                "done_fraction",
                "erred_fraction",
                "processing_fraction",
                "colour",
                "label",
            )
        }
        prefixes = sorted((sample.prefixes if sample else {}).items())
        for index, (prefix, states) in enumerate(prefixes):
            total = sum(states.values())
            done = sum(states.get(s, 0) for s in DONE_STATES)
            erred = states.get("erred", 0)
            processing = states.get("processing", 0)
            columns["index"].append(index)
            columns["prefix"].append(prefix)
            columns["total"].append(total)
            columns["done"].append(done)
            columns["erred"].append(erred)
            columns["processing"].append(processing)
            columns["waiting"].append(total - done - erred - processing)
            columns["done_fraction"].append(done / total)
            columns["erred_fraction"].append((done + erred) / total)
            columns["processing_fraction"].append((done + erred + processing) / total)
            columns["colour"].append(self.colour(prefix))
            columns["label"].append(f"{prefix}: {done + erred}/{total}")
        return columns

    def worker_columns(self) -> dict[str, list[Any]]:
        """One row per worker: threads, processing, executing, memory."""
        sample = self.refresh()
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "index",
                "worker",
                "address",
                "pid",
                "status",
                "nthreads",
                "processing",
                "executing",
                "in_memory",
                "managed",
                "unmanaged",
                "total",
                "memory_limit",
                "memory_text",
                "memory_label",
                "processing_label",
            )
        }
        from localsched.units import format_bytes

        for index, w in enumerate(sample.workers if sample else ()):
            unmanaged = max(w.unmanaged, 0)
            columns["index"].append(index)
            columns["worker"].append(w.name)
            columns["address"].append(w.address)
            columns["pid"].append(w.pid)
            columns["status"].append(w.status)
            columns["nthreads"].append(w.nthreads)
            columns["processing"].append(w.processing)
            # The executing count comes from heartbeats and may lag: a task
            # cannot be executing on a worker without being processing there.
            columns["executing"].append(min(w.executing, w.processing))
            columns["in_memory"].append(w.in_memory)
            columns["managed"].append(w.nbytes)
            columns["unmanaged"].append(unmanaged)
            columns["total"].append(unmanaged + w.nbytes)
            columns["memory_limit"].append(w.memory_limit)
            text = (
                f"{format_bytes(w.nbytes)} managed + {format_bytes(unmanaged)} "
                "unmanaged"
                + (f" / {format_bytes(w.memory_limit)}" if w.memory_limit else "")
            )
            columns["memory_text"].append(text)
            columns["memory_label"].append(f"{w.name}: {text}")
            columns["processing_label"].append(
                f"{w.name}: {w.processing} processing, "
                f"{min(w.executing, w.processing)} executing"
            )
        return columns

    def event_columns(self) -> dict[str, list[Any]]:
        """The recent events, newest first."""
        self.refresh()
        with self._lock:
            events = list(self.events)[::-1]
        return {
            "time": [
                time.strftime("%H:%M:%S", time.localtime(t)) for t, _, _ in events
            ],
            "topic": [topic for _, topic, _ in events],
            "message": [message for _, _, message in events],
        }

    def summary(self) -> dict[str, Any]:
        """Totals for the page header (and the tests)."""
        sample = self.refresh()
        states: dict[str, int] = {}
        for prefix_states in (sample.prefixes if sample else {}).values():
            for state, n in prefix_states.items():
                states[state] = states.get(state, 0) + n
        workers = sample.workers if sample else []
        return {
            "cluster": self.cluster.name,
            "status": self.cluster.status,
            "workers": len(workers),
            "threads": sum(w.nthreads for w in workers),
            "processing": sum(w.processing for w in workers),
            "executing": sum(min(w.executing, w.processing) for w in workers),
            "tasks": dict(sorted(states.items())),
            "tasks_in_stream": self.tasks_seen,
            "spilled_bytes": sample.spilled_bytes if sample else 0,
        }
