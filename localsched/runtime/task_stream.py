"""The task stream: every task that left ``processing``, for ``get_task_stream``.

A :class:`TaskStreamPlugin` runs on the scheduler thread (registered on first
use by the request handler); clients read it with ``TaskStream`` requests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from typing import Any

from localsched.plugins import SchedulerPlugin
from localsched.units import parse_timedelta

Key = Hashable

#: Records the task stream keeps (dask's ``task-stream-length`` default).
TASK_STREAM_LENGTH = 100_000
TASK_STREAM_PLUGIN = "task-stream"

__all__ = ["TASK_STREAM_PLUGIN", "TaskStreamPlugin", "task_stream_plugin"]


class TaskStreamPlugin(SchedulerPlugin):
    """Records every task that left ``processing`` (dask's ``TaskStreamPlugin``).

    The hook only appends to a bounded deque; records are shaped for users when
    collected. ``index`` counts every record ever appended, a cursor for the
    ``get_task_stream`` context manager.
    """

    name = TASK_STREAM_PLUGIN
    idempotent = True

    def __init__(self, scheduler: Any = None, maxlen: int | None = None) -> None:
        self.scheduler = scheduler
        self.buffer: deque[tuple[Key, str, dict[str, Any]]] = deque(
            maxlen=maxlen or TASK_STREAM_LENGTH
        )
        self.index = 0

    def transition(
        self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any
    ) -> None:
        if start == "processing" and finish in ("memory", "erred"):
            self.buffer.append((key, finish, kwargs))
            self.index += 1

    def collect(
        self,
        start: float | str | None = None,
        stop: float | str | None = None,
        count: int | None = None,
        start_index: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records by buffer position, or by stop time (dask's ``collect``)."""
        buffer = self.buffer
        if start_index is not None:
            first = max(0, min(start_index - (self.index - len(buffer)), len(buffer)))
            return [_record(buffer[i]) for i in range(first, len(buffer))]

        def bisect(target: float) -> int:
            left, right = 0, len(buffer)
            while left != right:
                mid = (left + right) // 2
                if _last_stop(buffer[mid]) < target:
                    left = mid + 1
                else:
                    right = mid
            return left

        lo = None if start is None else bisect(_timestamp(start))
        hi = None if stop is None else bisect(_timestamp(stop))
        if count is not None:
            if lo is None and hi is None:
                hi = len(buffer)
                lo = hi - count
            elif lo is None:
                lo = hi - count  # type: ignore[operator]
            elif hi is None:
                hi = lo + count
        lo = max(0, 0 if lo is None else lo)
        hi = min(len(buffer), len(buffer) if hi is None else hi)
        return [_record(buffer[i]) for i in range(lo, hi)]


def _timestamp(value: float | str) -> float:
    """A ``time()`` value, or a delay before now such as ``"60s"``."""
    if isinstance(value, str):
        return time.time() - parse_timedelta(value)
    return float(value)


def _last_stop(entry: tuple[Key, str, dict[str, Any]]) -> float:
    startstops = entry[2].get("startstops") or ()
    return max((s[2] for s in startstops), default=0.0)


def _record(entry: tuple[Key, str, dict[str, Any]]) -> dict[str, Any]:
    key, finish, kwargs = entry
    record: dict[str, Any] = {
        "key": key,
        "worker": kwargs.get("worker"),
        "status": "OK" if finish == "memory" else "error",
        "startstops": [
            {"action": action, "start": begin, "stop": end}
            for action, begin, end in kwargs.get("startstops") or ()
        ],
    }
    for name in ("nbytes", "type", "stimulus_id", "exception_text"):
        if kwargs.get(name) is not None:
            record[name] = kwargs[name]
    return record


def task_stream_plugin(scheduler: Any) -> TaskStreamPlugin:
    """The scheduler's task stream plugin, registered on first use."""
    plugin = scheduler.plugins.get(TASK_STREAM_PLUGIN)
    if not isinstance(plugin, TaskStreamPlugin):
        plugin = TaskStreamPlugin(scheduler)
        scheduler.add_plugin(plugin, name=TASK_STREAM_PLUGIN)
    return plugin
