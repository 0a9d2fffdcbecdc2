"""Reprs of ``Client``, ``LocalCluster``, ``Future`` and ``Scheduler``.

Each object's ``_repr_html_`` (notebooks) and ``__rich__`` (terminals) delegate
here. The figures come from one ``ClusterSnapshot`` taken on the scheduler
thread (``runtime.call``), so a repr never walks state another thread changes;
it reads counters (per-prefix state counts, dict sizes), never every task.
Memory used is each worker process's resident set size (psutil). HTML is built
with plain strings: no template engine.
"""

from __future__ import annotations

import contextlib
import html
from dataclasses import dataclass, field
from typing import Any

from localsched.units import format_bytes

#: Colours of task states, shared by HTML and rich.
STATE_COLOURS = {
    "memory": "#2ca02c",
    "processing": "#1f77b4",
    "queued": "#9467bd",
    "waiting": "#7f7f7f",
    "no-worker": "#ff7f0e",
    "erred": "#d62728",
    "released": "#bcbd22",
}
FUTURE_COLOURS = {
    "finished": "#2ca02c",
    "pending": "#1f77b4",
    "error": "#d62728",
    "cancelled": "#7f7f7f",
    "lost": "#ff7f0e",
}


@dataclass
class WorkerRow:
    """What a repr shows of one worker."""

    name: str
    address: str
    pid: int
    nthreads: int
    status: str
    processing: int
    executing: int
    in_memory: int
    nbytes: int
    memory_limit: int
    #: Resident set size of the worker's process (psutil); -1 if unknown.
    rss: int = -1


@dataclass
class ClusterSnapshot:
    """A consistent view of a scheduler's counters."""

    name: str
    status: str
    address: str
    workers: list[WorkerRow] = field(default_factory=list)
    #: Task state -> number of tasks, summed over prefixes (counters, no walk).
    task_states: dict[str, int] = field(default_factory=dict)
    #: prefix -> state -> count, for the dashboard.
    prefixes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: ``cluster.adaptive.summary()`` when adaptive scaling is on.
    adaptive: dict[str, Any] | None = None
    #: The web dashboard's link with its token; None when it is off.
    dashboard_link: str | None = None

    @property
    def nthreads(self) -> int:
        return sum(w.nthreads for w in self.workers)

    @property
    def memory_used(self) -> int:
        return sum(max(w.rss, 0) for w in self.workers)

    @property
    def memory_limit(self) -> int:
        return sum(w.memory_limit for w in self.workers)


# -- taking snapshots -----------------------------------------------------------------


def _collect(scheduler: Any, name: str, status: str) -> ClusterSnapshot:
    """On the scheduler thread (or with no thread running)."""
    workers = [
        WorkerRow(
            name=str(ws.name),
            address=ws.address,
            pid=ws.pid,
            nthreads=ws.nthreads,
            status=ws.status,
            processing=len(ws.processing),
            # The count comes with heartbeats (every 0.5 s while tasks run):
            # a worker with nothing processing executes nothing, whatever the
            # last heartbeat said.
            executing=min(ws.executing_count, len(ws.processing)),
            in_memory=len(ws.has_what),
            nbytes=ws.nbytes,
            memory_limit=ws.memory_limit,
        )
        for ws in scheduler.workers.values()
    ]
    totals: dict[str, int] = {}
    prefixes: dict[str, dict[str, int]] = {}
    for prefix_name, prefix in scheduler.task_prefixes.items():
        live = {state: n for state, n in prefix.states.items() if n}
        if live:
            prefixes[prefix_name] = live
            for state, n in live.items():
                totals[state] = totals.get(state, 0) + n
    return ClusterSnapshot(
        name=name,
        status=status,
        address=scheduler.address,
        workers=workers,
        task_states=totals,
        prefixes=prefixes,
    )


def _add_rss(snapshot: ClusterSnapshot) -> None:
    import psutil

    for row in snapshot.workers:
        with contextlib.suppress(psutil.Error, ValueError):
            row.rss = psutil.Process(row.pid).memory_info().rss if row.pid else -1


def cluster_snapshot(cluster: Any, timeout: float = 2.0) -> ClusterSnapshot:
    """Snapshot of a ``LocalCluster``, taken on its scheduler thread."""
    scheduler = cluster.scheduler
    runtime = cluster.runtime

    def collect() -> ClusterSnapshot:
        return _collect(scheduler, cluster.name, cluster.status)

    if runtime.is_running:
        snapshot = runtime.call(collect).result(timeout=timeout)
    else:
        snapshot = collect()  # no thread changes the state any more
    adaptive = getattr(cluster, "adaptive", None)
    summary = getattr(adaptive, "summary", None)
    if callable(summary):
        with contextlib.suppress(Exception):
            snapshot.adaptive = dict(summary())
    snapshot.dashboard_link = getattr(cluster, "dashboard_link", None)
    _add_rss(snapshot)
    return snapshot


def scheduler_snapshot(scheduler: Any) -> ClusterSnapshot:
    """Snapshot of a ``Scheduler``: through its cluster's thread when it has one."""
    cluster = getattr(scheduler, "cluster_ref", lambda: None)()
    if cluster is not None and cluster.scheduler is scheduler:
        snapshot = cluster_snapshot(cluster)
        snapshot.name, snapshot.status = "Scheduler", scheduler.status
        return snapshot
    snapshot = _collect(scheduler, "Scheduler", scheduler.status)
    _add_rss(snapshot)
    return snapshot


# -- HTML -----------------------------------------------------------------------

_TABLE = 'style="border-collapse:collapse;text-align:right;font-size:0.9em"'
# One style block instead of attributes on every cell: rows stay plain
# ``<td>value</td>``, short and easy to read or search.
_STYLE = (
    "<style>.localsched-repr td, .localsched-repr th "
    "{padding:1px 8px;border-bottom:1px solid #ddd}</style>"
)


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _memory_text(snapshot: ClusterSnapshot) -> str:
    used = format_bytes(snapshot.memory_used)
    limit = snapshot.memory_limit
    return f"{used} / {format_bytes(limit)}" if limit else f"{used} / no limit"


def _states_html(states: dict[str, int]) -> str:
    if not states:
        return "no tasks"
    return ", ".join(
        f'<span style="color:{STATE_COLOURS.get(s, "inherit")}">{s}: {n:,}</span>'
        for s, n in sorted(states.items())
    )


def cluster_html(snapshot: ClusterSnapshot, title: str) -> str:
    """HTML summary and worker table of a snapshot."""
    rows = "".join(
        _row(
            [
                html.escape(w.name),
                str(w.nthreads),
                html.escape(w.status),
                str(w.processing),
                str(w.in_memory),
                format_bytes(w.nbytes),
                format_bytes(w.rss) if w.rss >= 0 else "?",
                format_bytes(w.memory_limit) if w.memory_limit else "none",
            ]
        )
        for w in snapshot.workers
    )
    header = _row(
        [
            "worker",
            "threads",
            "status",
            "processing",
            "results",
            "result bytes",
            "memory",
            "limit",
        ],
        tag="th",
    )
    adaptive = ""
    if snapshot.adaptive is not None:
        items = ", ".join(
            f"{html.escape(str(k))}: {html.escape(str(v))}"
            for k, v in snapshot.adaptive.items()
        )
        adaptive = f"<li>adaptive: {items}</li>"
    if snapshot.dashboard_link is not None:
        link = html.escape(snapshot.dashboard_link)
        adaptive += f'<li>dashboard: <a href="{link}" target="_blank">{link}</a></li>'
    return (
        f'<div class="localsched-repr">{_STYLE}'
        f"<strong>{html.escape(title)}</strong>"
        "<ul style='margin:2px 0'>"
        f"<li>status: {html.escape(snapshot.status)}, "
        f"address: <code>{html.escape(snapshot.address)}</code></li>"
        f"<li>workers: {len(snapshot.workers)}, threads: {snapshot.nthreads}, "
        f"memory: {_memory_text(snapshot)}</li>"
        f"<li>tasks: {_states_html(snapshot.task_states)}</li>"
        f"{adaptive}</ul>"
        f"<table {_TABLE}>{header}{rows}</table></div>"
    )


def client_html(client: Any) -> str:
    title = f"Client {client.id}"
    cluster = client.cluster
    if client.status != "running" or cluster is None or cluster.status != "running":
        # dask's words for a client that cannot reach a scheduler (a task's
        # client has no cluster object to show: its text repr says more).
        connected = (
            ""
            if cluster is None and client.status == "running"
            else ("No scheduler connected. ")
        )
        return (
            f"<div><strong>{html.escape(title)}</strong> {connected}"
            f"({html.escape(client.status)})</div>"
        )
    snapshot = cluster_snapshot(cluster)
    table = cluster_html(snapshot, f"{type(cluster).__name__} {snapshot.name}")
    return (
        f'<div class="localsched-client"><strong>{html.escape(title)}</strong>'
        f" scheduler: <code>{html.escape(snapshot.address)}</code>, "
        f"threads={snapshot.nthreads}"
        f"<div style='margin-left:1em'>{table}</div></div>"
    )


def future_html(future: Any) -> str:
    status = future.status
    colour = FUTURE_COLOURS.get(status, "inherit")
    text = (
        f"<strong>Future:</strong> <code>{html.escape(str(future.key))}</code> "
        f'<span style="color:{colour}">status: {html.escape(status)}</span>'
    )
    name = future._state.type  # the type's name: no import for a repr
    if name:
        text += f", type: <code>{html.escape(name)}</code>"
    return f'<div class="localsched-future">{text}</div>'


# -- rich -----------------------------------------------------------------------


def cluster_rich(snapshot: ClusterSnapshot, title: str) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    summary = Text()
    summary.append(f"status: {snapshot.status}  address: {snapshot.address}\n")
    summary.append(
        f"workers: {len(snapshot.workers)}  threads: {snapshot.nthreads}  "
        f"memory: {_memory_text(snapshot)}\n"
    )
    summary.append("tasks: ")
    if not snapshot.task_states:
        summary.append("none")
    for i, (state, n) in enumerate(sorted(snapshot.task_states.items())):
        if i:
            summary.append(", ")
        summary.append(f"{state}: {n:,}", style=STATE_COLOURS.get(state, ""))
    if snapshot.adaptive is not None:
        summary.append(
            "\nadaptive: "
            + ", ".join(f"{k}: {v}" for k, v in snapshot.adaptive.items())
        )
    if snapshot.dashboard_link is not None:
        link = snapshot.dashboard_link
        summary.append("\ndashboard: ")
        summary.append(link, style=f"link {link}")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("worker", "threads", "status", "processing", "results", "memory"):
        table.add_column(column, justify="left" if column == "worker" else "right")
    for w in snapshot.workers:
        memory = memory_text(w)
        table.add_row(
            w.name,
            str(w.nthreads),
            w.status,
            str(w.processing),
            str(w.in_memory),
            memory,
        )
    return Panel(Group(summary, table), title=title, title_align="left", expand=False)


def client_rich(client: Any) -> Any:
    from rich.text import Text

    title = f"Client {client.id}"
    if client.status != "running" or client.cluster.status != "running":
        return Text(f"{title} ({client.status})")
    snapshot = cluster_snapshot(client.cluster)
    return cluster_rich(snapshot, f"{title} on {snapshot.name}")


def future_rich(future: Any) -> Any:
    from rich.text import Text

    text = Text("Future: ", style="bold")
    text.append(str(future.key), style="")
    text.append(f"  {future.status}", style=FUTURE_COLOURS.get(future.status, ""))
    name = future._state.type  # the type's name: no import for a repr
    if name:
        text.append(f"  type: {name}")
    return text


def memory_text(worker: Any) -> str:
    """``used / limit`` of a worker snapshot (``?`` when its RSS is unknown)."""
    memory = format_bytes(worker.rss) if worker.rss >= 0 else "?"
    if worker.memory_limit:
        memory += f" / {format_bytes(worker.memory_limit)}"
    return memory
