"""Recording what the cluster does, for ``performance_report`` and the task stream
picture: the scheduler thread's side.

Theory of operation
-------------------
::

    StartRecording ──▶ runtime.recorder = Recorder (first session) ─┐ taps, while set:
                                                                    │
    TaskDone / TaskFailed (scheduler_thread) ── one flat tuple ─────┤ tasks
    worker Hello / exit (scheduler_thread, supervision) ────────────┤ events
    pause / resume / terminate / restart / spill (memory monitor) ──┤ events
    every SAMPLE_INTERVAL (a periodic callback of its own) ─────────┘ memory
    StopRecording(session) ──▶ RecordingData: the entries since the session began
                               (the last session gone: runtime.recorder = None)

The recording is not a scheduler plugin: a ``transition`` hook would send every
transition of the core down its slow path (``docs/architecture.md``), several
microseconds per task. Instead the runtime reads ``runtime.recorder`` once per
message that ends a task and, when a recording is on, appends one tuple of
atoms (which the cyclic GC stops tracking at once). When it is off that one
``is None`` test is all it costs (``benchmarks/bench_recording.py``).

Entries are kept as plain tuples and shaped for people on the client's side
(``localsched.client.report``), so the scheduler thread spends no time on
presentation, and an answer crosses a worker's pipe as it is (the requests
work from inside a task).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from localsched.runtime.memory import _ProcessReader
from localsched.transport.requests import RecordingData

if TYPE_CHECKING:
    from localsched.runtime.handles import WorkerHandle
    from localsched.runtime.scheduler_thread import PeriodicCallback, SchedulerRuntime
    from localsched.transport.protocol import TaskDone, TaskFailed

__all__ = [
    "MAX_ENTRIES",
    "SAMPLE_INTERVAL",
    "Recorder",
    "RecordingData",
    "start_recording",
    "stop_recording",
]

#: Seconds between two memory samples while recording.
SAMPLE_INTERVAL = 0.2
#: Task entries kept at most (the oldest go first, counted in ``dropped``);
#: dask's task stream keeps 100k, a report block often runs more.
MAX_ENTRIES = 1_000_000


class Recorder:
    """The runtime's recording while any session is open (module docstring).

    Each list is append-only; a session remembers the length of each when it
    began (plus what was dropped since), so sessions overlap freely.
    """

    def __init__(self, runtime: SchedulerRuntime) -> None:
        self.runtime = runtime
        self.tasks: list[tuple[Any, ...]] = []
        self.memory: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        #: Task entries dropped from the front of ``tasks`` so far.
        self.dropped = 0
        #: session id -> (start time, tasks, memory, events positions).
        self.sessions: dict[int, tuple[float, int, int, int]] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        #: The memory monitor's last budget (0: no monitor, or no limits).
        self.budget = 0
        self._read_unmanaged = _ProcessReader()
        self._periodic: PeriodicCallback | None = None

    # -- taps (scheduler thread) ---------------------------------------------------

    def task_done(self, address: str, m: TaskDone) -> None:
        self.tasks.append(
            (
                m.key,
                address,
                m.thread,
                m.load_start,
                m.start,
                m.stop,
                m.nbytes,
                m.type,
                None,
            )
        )

    def task_failed(self, address: str, m: TaskFailed) -> None:
        self.tasks.append(
            (
                m.key,
                address,
                m.thread,
                m.load_start,
                m.start,
                m.stop,
                0,
                None,
                m.exception_text or "error",
            )
        )

    def event(self, kind: str, address: str, detail: str = "") -> None:
        self.events.append((time.time(), kind, address, detail))

    def worker_added(self, handle: WorkerHandle, nthreads: int) -> None:
        self._describe(handle, nthreads)
        self.event("added", handle.address, f"pid {handle.pid}")

    def worker_exited(self, handle: WorkerHandle, expected: bool) -> None:
        if handle.restarting:
            kind = "restarted"
        elif expected and not handle.exit_cause:
            kind = "removed"
        else:
            kind = "died"
        self.event(kind, handle.address, handle.exit_reason or "")

    # -- memory --------------------------------------------------------------------

    def sample(self) -> None:
        """One memory reading: the store's managed and spilled bytes, each
        worker's unmanaged bytes (``localsched.runtime.memory`` says what each
        means here)."""
        runtime = self.runtime
        unmanaged: dict[str, int] = {}
        for address, handle in list(runtime.workers.items()):
            if not handle.is_ready or not handle.pid:
                continue
            self._describe(handle, None)
            value = self._read_unmanaged(handle.pid)
            if value is not None:
                unmanaged[address] = value
        store = runtime.store
        spilled = int(getattr(store, "spilled_bytes", 0) or 0)
        self.memory.append((time.time(), store.memory_bytes, spilled, unmanaged))
        excess = len(self.tasks) - MAX_ENTRIES
        if excess > 0:
            del self.tasks[:excess]
            self.dropped += excess

    def _describe(self, handle: WorkerHandle, nthreads: int | None) -> None:
        known = self.workers.get(handle.address)
        if known is None:
            ws = self.runtime.scheduler.state.workers.get(handle.address)
            self.workers[handle.address] = {
                "name": handle.name,
                "nthreads": nthreads or (ws.nthreads if ws is not None else 1),
                "memory_limit": handle.memory_limit,
            }
        elif nthreads:
            known["nthreads"] = nthreads

    # -- sessions ------------------------------------------------------------------

    def open(self, session: int) -> None:
        if self._periodic is None:
            self._periodic = self.runtime.add_periodic(
                SAMPLE_INTERVAL, self.sample, "recording"
            )
        for handle in self.runtime.workers.values():
            if handle.is_ready:
                self._describe(handle, None)
        self.sample()  # memory as the block begins
        self.sessions[session] = (
            time.time(),
            self.dropped + len(self.tasks),
            len(self.memory) - 1,
            len(self.events),
        )

    def close(self, session: int) -> RecordingData:
        start, tasks_at, memory_at, events_at = self.sessions.pop(session)
        self.sample()  # memory as the block ends
        first = max(0, tasks_at - self.dropped)
        data = RecordingData(
            start=start,
            stop=time.time(),
            tasks=self.tasks[first:],
            memory=self.memory[memory_at:],
            events=self.events[events_at:],
            workers={a: dict(w) for a, w in self.workers.items()},
            budget=self.budget
            or sum(h.memory_limit or 0 for h in self.runtime.workers.values()),
            dropped=max(0, self.dropped - tasks_at),
        )
        if not self.sessions and self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        return data


_sessions = itertools.count(1)


def start_recording(runtime: SchedulerRuntime) -> int:
    """Open a session (scheduler thread); its id, for :func:`stop_recording`."""
    recorder = runtime.recorder
    if recorder is None:
        recorder = runtime.recorder = Recorder(runtime)
    session = next(_sessions)
    recorder.open(session)
    return session


def stop_recording(runtime: SchedulerRuntime, session: int) -> RecordingData:
    """Close a session (scheduler thread): what it saw. The last one closed
    turns the taps off.

    Raises
    ------
    KeyError
        No such session is open.
    """
    recorder = runtime.recorder
    if recorder is None or session not in recorder.sessions:
        raise KeyError(f"no recording session {session}")
    data = recorder.close(session)
    if not recorder.sessions:
        runtime.recorder = None
    return data
