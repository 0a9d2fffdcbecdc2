"""A live terminal view of a cluster: ``top`` for the workers in this process.

``dashboard(client)`` redraws, with rich ``Live``, a table of workers (CPU,
memory, tasks processing and executing, results held) and a bar per task
prefix from the scheduler's per-prefix state counters. Each refresh takes one
``ClusterSnapshot`` on the scheduler thread; nothing walks the task graph.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from localsched.reprs import (
    STATE_COLOURS,
    ClusterSnapshot,
    cluster_snapshot,
    memory_text,
)
from localsched.units import format_bytes

#: States a prefix's finished tasks are in: their results were made.
_DONE_STATES = ("memory", "released", "forgotten")
#: Prefixes shown at most (the ones with the most tasks).
MAX_PREFIXES = 12


class DashboardView:
    """A rich renderable of a cluster, re-sampled on every render."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        # psutil measures CPU between two calls on the same Process object.
        self._processes: dict[int, Any] = {}

    def _cpu_percent(self, pid: int) -> float | None:
        import psutil

        process = self._processes.get(pid)
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            return process.cpu_percent(None)
        except psutil.Error:
            self._processes.pop(pid, None)
            return None

    def __rich__(self) -> Any:
        snapshot = cluster_snapshot(self.cluster)
        return render(
            snapshot, {w.pid: self._cpu_percent(w.pid) for w in snapshot.workers}
        )


def render(snapshot: ClusterSnapshot, cpu: dict[int, float | None]) -> Any:
    """Workers table and per-prefix bars of a snapshot."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    workers = Table(box=None, header_style="bold", pad_edge=False)
    for column in (
        "worker",
        "pid",
        "threads",
        "CPU",
        "memory",
        "executing",
        "processing",
        "results",
    ):
        workers.add_column(column, justify="left" if column == "worker" else "right")
    for w in snapshot.workers:
        percent = cpu.get(w.pid)
        memory = memory_text(w)
        workers.add_row(
            w.name,
            str(w.pid),
            str(w.nthreads),
            "?" if percent is None else f"{percent:.0f}%",
            memory,
            str(w.executing),
            str(w.processing),
            f"{w.in_memory} ({format_bytes(w.nbytes)})",
        )
    prefixes = Table.grid(padding=(0, 1))
    for justify in ("right", "left", "right", "left"):
        prefixes.add_column(justify=justify)
    biggest = sorted(
        snapshot.prefixes.items(), key=lambda item: -sum(item[1].values())
    )[:MAX_PREFIXES]
    for name, states in sorted(biggest):
        total = sum(states.values())
        done = sum(states.get(s, 0) for s in _DONE_STATES)
        erred = states.get("erred", 0)
        style = "red" if erred else ("green" if done == total else "cyan")
        detail = Text()
        for state in ("processing", "queued", "waiting", "no-worker", "erred"):
            if states.get(state):
                detail.append(f"{state} {states[state]} ", style=STATE_COLOURS[state])
        prefixes.add_row(
            name,
            ProgressBar(
                total=total,
                completed=done + erred,
                width=30,
                complete_style=style,
                finished_style=style,
            ),
            f"{done + erred}/{total}",
            detail,
        )
    header = Text(
        f"{snapshot.name}  {snapshot.status}  workers: {len(snapshot.workers)}  "
        f"threads: {snapshot.nthreads}  memory: {format_bytes(snapshot.memory_used)}"
        f"  {time.strftime('%H:%M:%S')}"
    )
    if snapshot.adaptive is not None:
        header.append(
            "\nadaptive: "
            + ", ".join(f"{k}: {v}" for k, v in snapshot.adaptive.items())
        )
    parts: list[Any] = [header, workers]
    if snapshot.prefixes:
        parts += [Text("tasks by prefix", style="bold"), prefixes]
    return Panel(Group(*parts), title="localsched", title_align="left")


def dashboard(
    client: Any,
    *,
    interval: float = 1.0,
    duration: float | None = None,
    until: Iterable[Any] | None = None,
    console: Any = None,
) -> None:
    """Show a live view of the cluster in the terminal; blocks.

    Parameters
    ----------
    client
        A ``Client`` or ``LocalCluster``.
    interval
        Seconds between refreshes.
    duration
        Stop after this many seconds (default: until ``until`` finishes, else
        until Ctrl-C).
    until
        Futures: stop once all of them are done.
    console
        The rich ``Console`` to draw on.

    Examples
    --------
    >>> futures = client.map(slowinc, range(1000))  # doctest: +SKIP
    >>> dashboard(client, until=futures)  # doctest: +SKIP
    """
    from rich.console import Console
    from rich.live import Live

    cluster = getattr(client, "cluster", client)
    view = DashboardView(cluster)
    futures = list(until or ())
    deadline = None if duration is None else time.monotonic() + duration

    def finished() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return True
        if cluster.status != "running":
            return True
        return bool(futures) and all(f.done() for f in futures)

    console = console or Console()
    with (
        contextlib.suppress(KeyboardInterrupt),
        Live(view, console=console, auto_refresh=False) as live,
    ):
        refresh_until(live, finished, interval, deadline)
    end_frame(console)


def refresh_until(
    live: Any,
    finished: Callable[[], bool],
    interval: float,
    deadline: float | None = None,
) -> None:
    """Redraw ``live`` now, then every ``interval`` seconds (or at the
    ``deadline``, ``time.monotonic()``) until ``finished()``."""
    pause = threading.Event()
    live.refresh()
    while not finished():
        pause.wait(
            interval
            if deadline is None
            else min(interval, max(0.0, deadline - time.monotonic()))
        )
        live.refresh()


def end_frame(console: Any) -> None:
    """End the line of the last frame where rich leaves it open.

    Outside a terminal rich ``Live`` writes the final frame once, without a
    newline after its border, so the next output would be glued to it.
    """
    if not console.is_terminal:
        console.line()
