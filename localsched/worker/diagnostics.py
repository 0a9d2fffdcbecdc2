"""What a worker tells about itself: its logs, its call stacks, its profile.

The scheduler asks with an :class:`~localsched.transport.protocol.Inspect`
message; the control thread answers at once through :func:`inspect` (nothing
here runs user code or waits), with a ``FunctionResult``::

    Client.get_worker_logs ─┐                   ┌─ LogRing: the worker's log
    Client.call_stack ──────┼─ Inspect ─▶ inspect ─ call_stacks: sys._current_frames
    Client.profile ─────────┘                   └─ Profiler: sampled stacks

- :class:`LogRing` keeps the last records of the ``localsched`` logger in a
  bounded deque (dask's ``DequeHandler``, 10,000 records); the scheduler's
  process keeps one too, for ``get_scheduler_logs``.
- :func:`call_stacks`: what each task thread is running now, from the frame of
  the task's function down (the answer to "why is it stuck?").
- :class:`Profiler`: dask's statistical profiler. A thread, started with the
  worker's first task, samples the task threads' stacks every 10 ms while
  tasks run (every 100 ms while none does) into a call tree per key prefix,
  cycled into a bounded history every second. The trees have dask's shape
  (``count``, ``children``, ``identifier``, ``description``).

The modules imported here are already loaded when a worker starts (cloudpickle
imports ``logging`` and ``linecache``), so a worker pays nothing for them.
"""

from __future__ import annotations

import linecache
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localsched.worker.main import Worker

__all__ = [
    "LOG_FORMAT",
    "LogRing",
    "Profiler",
    "call_stack",
    "call_stacks",
    "create",
    "inspect",
    "merge",
]

Key = Hashable

#: dask's ``distributed.admin.log-format``.
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
#: dask's ``distributed.admin.log-length``: records kept.
LOG_LENGTH = 10_000
#: Seconds between samples while tasks run (dask: ``profile.interval``, 10 ms).
PROFILE_INTERVAL = 0.01
#: Seconds between samples while no task runs.
IDLE_INTERVAL = 0.1
#: Seconds per entry of the profile history (dask: ``profile.cycle``, 1 s).
PROFILE_CYCLE = 1.0
#: Entries of the profile history kept (dask keeps 3,600: an hour).
PROFILE_HISTORY = 3_600
#: Frames kept per stack, as dask's cut-off.
MAX_DEPTH = 100


class LogRing(logging.Handler):
    """Keeps the last ``maxlen`` records handled; formats them when asked."""

    def __init__(self, maxlen: int = LOG_LENGTH) -> None:
        super().__init__()
        self.records: deque[logging.LogRecord] = deque(maxlen=maxlen)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # formatted on demand: logging stays cheap
        # A handler anywhere stops Python's last resort (WARNING and up to
        # stderr while the application configured no logging); keeping the
        # ring must not silence a worker's death or memory pressure.
        last_resort = logging.lastResort
        if (
            last_resort is not None
            and record.levelno >= last_resort.level
            and not self._has_other_handler(record.name)
        ):
            last_resort.handle(record)

    def _has_other_handler(self, name: str) -> bool:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False

    def get_logs(
        self, n: int | None = None, start: float = 0, timestamps: bool = False
    ) -> list[tuple[Any, ...]]:
        """dask's ``get_logs``: newest first, ``(level, text)`` or with
        ``timestamps`` ``(created, level, text)``; at most ``n``, none older
        than ``start``."""
        out: list[tuple[Any, ...]] = []
        for record in reversed(list(self.records)):
            if (n and len(out) >= n) or record.created < start:
                break
            text = self.format(record)
            if timestamps:
                out.append((record.created, record.levelname, text))
            else:
                out.append((record.levelname, text))
        return out

    def install(self, logger: logging.Logger) -> Callable[[], None]:
        """Attach to ``logger``; returns the function that detaches it."""
        logger.addHandler(self)
        return lambda: logger.removeHandler(self)


# -- call stacks ----------------------------------------------------------------------


def _run_task_code() -> CodeType:
    from localsched.worker.execute import run_task

    return run_task.__code__


def _user_frames(frame: FrameType, depth: int = MAX_DEPTH) -> list[FrameType]:
    """The frames from the task's function down to ``frame``, outermost first;
    none while the thread is not inside ``run_task`` yet (it is loading the
    task's function and arguments: dask loads them before a thread runs the
    task, so its stacks and profiles never show that either)."""
    stop = _run_task_code()
    frames: list[FrameType] = []
    current: FrameType | None = frame
    while current is not None:
        if current.f_code is stop:
            return frames[::-1][-depth:]
        frames.append(current)
        current = current.f_back
    return []


def _repr_frame(frame: FrameType) -> str:
    """dask's ``profile.repr_frame``: a line of a text traceback."""
    code = frame.f_code
    line_number = frame.f_lineno or code.co_firstlineno
    text = f'  File "{code.co_filename}", line {line_number}, in {code.co_name}'
    line = linecache.getline(code.co_filename, line_number, frame.f_globals)
    return f"{text}\n\t{line.lstrip()}"


def call_stack(frame: FrameType) -> list[str]:
    """The stack of a task thread as text lines, outermost first (dask's
    ``profile.call_stack``, without the worker's own frames)."""
    return [_repr_frame(f) for f in _user_frames(frame)]


def call_stacks(
    threads: dict[Key, int], keys: Iterable[Key] | None = None
) -> dict[Key, list[str]]:
    """key -> :func:`call_stack` of the thread running it, for ``threads``
    (key -> thread ident), restricted to ``keys`` if given."""
    frames = sys._current_frames()
    wanted = threads if keys is None else {k: threads[k] for k in keys if k in threads}
    stacks = {
        key: call_stack(frames[ident])
        for key, ident in wanted.items()
        if ident in frames
    }
    return {key: stack for key, stack in stacks.items() if stack}


# -- the statistical profiler ---------------------------------------------------------


def create() -> dict[str, Any]:
    """An empty call tree (dask's ``profile.create``)."""
    return {
        "count": 0,
        "children": {},
        "identifier": "root",
        "description": {"filename": "", "name": "", "line_number": 0, "line": ""},
    }


def _identifier(code: CodeType) -> str:
    return f"{code.co_name};{code.co_filename};{code.co_firstlineno}"


def process(frame: FrameType, state: dict[str, Any]) -> None:
    """Count one sample of the stack ending in ``frame`` into ``state`` (each
    frame from the task's function down gains one count); nothing while the
    task's function is still being loaded."""
    user_frames = _user_frames(frame)
    if not user_frames:
        return
    state["count"] += 1
    for f in user_frames:
        code = f.f_code
        ident = _identifier(code)
        children = state["children"]
        child = children.get(ident)
        if child is None:
            line_number = f.f_lineno or code.co_firstlineno
            child = children[ident] = {
                "count": 0,
                "children": {},
                "identifier": ident,
                "description": {
                    "filename": code.co_filename,
                    "name": code.co_name,
                    "line_number": line_number,
                    "line": linecache.getline(
                        code.co_filename, line_number, f.f_globals
                    ).lstrip(),
                },
            }
        child["count"] += 1
        state = child


def merge(*states: dict[str, Any]) -> dict[str, Any]:
    """One call tree counting every sample of ``states`` (dask's ``profile.merge``)."""
    if not states:
        return create()
    children: dict[str, list[dict[str, Any]]] = {}
    for state in states:
        for ident, child in state["children"].items():
            children.setdefault(ident, []).append(child)
    return {
        "count": sum(state["count"] for state in states),
        "children": {ident: merge(*group) for ident, group in children.items()},
        "identifier": states[0]["identifier"],
        "description": states[0]["description"],
    }


class Profiler:
    """Samples the task threads of a worker; see the module docstring.

    ``threads`` returns key -> thread ident of the tasks executing now (the
    worker takes its lock); ``prefix`` names a key's prefix.
    """

    def __init__(
        self,
        threads: Callable[[], dict[Key, int]],
        prefix: Callable[[Key], str],
        interval: float = PROFILE_INTERVAL,
        cycle: float = PROFILE_CYCLE,
    ) -> None:
        self._threads = threads
        self._prefix = prefix
        self.interval = interval
        self.cycle = cycle
        self._lock = threading.Lock()
        #: prefix -> call tree since the last cycle (guarded by _lock).
        self.recent: dict[str, dict[str, Any]] = {}
        #: (time the cycle ended, prefix -> call tree), oldest first.
        self.history: deque[tuple[float, dict[str, dict[str, Any]]]] = deque(
            maxlen=PROFILE_HISTORY
        )
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="localsched-profile", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        next_cycle = time.monotonic() + self.cycle
        wait = self.interval
        while not self._stopped.wait(wait):
            wait = self.interval if self.sample() else IDLE_INTERVAL
            if time.monotonic() >= next_cycle:
                next_cycle = time.monotonic() + self.cycle
                self._cycle()

    def sample(self) -> bool:
        """Count the stack of every executing task once; False if none runs."""
        threads = self._threads()
        if not threads:
            return False
        frames = sys._current_frames()
        with self._lock:
            for key, ident in threads.items():
                frame = frames.get(ident)
                if frame is None:
                    continue
                name = self._prefix(key)
                state = self.recent.get(name)
                if state is None:
                    state = self.recent[name] = create()
                process(frame, state)
        del frames  # frames keep their locals alive
        return True

    def _cycle(self) -> None:
        with self._lock:
            recent, self.recent = self.recent, {}
        if recent:
            self.history.append((time.time(), recent))

    def get_profile(
        self,
        key: str | None = None,
        start: float | None = None,
        stop: float | None = None,
    ) -> dict[str, Any]:
        """The merged call tree of the samples taken between ``start`` and
        ``stop`` (``time.time()``), of prefix ``key`` or of every prefix."""
        with self._lock:
            recent = dict(self.recent)
        entries = [*self.history, (time.time(), recent)]
        states = [
            state
            for ended, trees in entries
            if (start is None or ended >= start)
            and (stop is None or ended - self.cycle <= stop)
            for name, state in trees.items()
            if key is None or name == key
        ]
        return merge(*states) if states else create()


def inspect(worker: Worker, what: str, args: dict[str, Any]) -> Any:
    """The answer to an ``Inspect`` message (control thread)."""
    if what == "logs":
        return worker.log_ring.get_logs(n=args.get("n"))
    if what == "call_stack":
        keys = args.get("keys")
        return call_stacks(worker.executing_threads(), keys)
    if what == "profile":
        profiler = worker.profiler
        if profiler is None:
            return create()
        return profiler.get_profile(
            key=args.get("key"),
            start=args.get("start"),
            stop=args.get("stop"),
        )
    raise ValueError(f"a worker cannot tell {what!r}")
