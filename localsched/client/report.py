"""``performance_report``: one self-contained HTML file of what a block did.

::

    with performance_report(filename="report.html"):   # StartRecording
        x.compute()
    # StopRecording ──▶ RecordingData (plain tuples) ──▶ records ──▶ figures
    #                   ──▶ one HTML file: bokeh's JS and CSS inline, no network

The recording itself is the scheduler thread's (``localsched.runtime.recording``);
this module only shapes its tuples into records (:func:`records_of`) and lays
the figures of ``localsched.diagnostics.figures`` and plain-HTML tables out in
one page (:func:`render_report`). Tables and the summary are plain HTML, so the
numbers read without JavaScript too.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from localsched.transport import requests as rq
from localsched.units import format_bytes

__all__ = ["performance_report", "records_of", "render_report", "summary_of"]


def records_of(data: rq.RecordingData) -> dict[str, Any]:
    """``RecordingData``'s tuples as the records ``figures`` takes.

    Returns
    -------
    dict
        ``tasks`` (task records with ``thread`` and a ``transfer`` startstop
        where dependencies were loaded), ``memory`` (samples), ``events``,
        ``spills`` (the ``spilled`` events), ``workers``, ``start``, ``stop``,
        ``budget``, ``dropped``.
    """
    tasks = []
    for key, worker, thread, load_start, start, stop, nbytes, typ, error in data.tasks:
        startstops = []
        if load_start:
            startstops.append(
                {"action": "transfer", "start": load_start, "stop": start}
            )
        startstops.append({"action": "compute", "start": start, "stop": stop})
        record: dict[str, Any] = {
            "key": key,
            "worker": worker,
            "thread": thread,
            "status": "OK" if error is None else "error",
            "startstops": startstops,
        }
        if error is None:
            record["nbytes"] = nbytes
            record["type"] = typ
        else:
            record["exception_text"] = error
        tasks.append(record)
    memory = [
        {"time": t, "managed": managed, "spilled": spilled, "unmanaged": unmanaged}
        for t, managed, spilled, unmanaged in data.memory
    ]
    events = [
        {"time": t, "kind": kind, "worker": worker, "detail": detail}
        for t, kind, worker, detail in data.events
    ]
    return {
        "tasks": tasks,
        "memory": memory,
        "events": events,
        "spills": [e for e in events if e["kind"] == "spilled"],
        "workers": data.workers,
        "start": data.start,
        "stop": data.stop,
        "budget": data.budget,
        "dropped": data.dropped,
    }


def summary_of(records: Mapping[str, Any]) -> dict[str, Any]:
    """The report's summary: ``wall_time``, ``tasks``, ``errors``,
    ``tasks_per_second``, ``threads`` and ``busy`` (the fraction of the
    threads' time spent computing tasks, each worker counted while it was
    there)."""
    start, stop = records["start"], records["stop"]
    wall = max(stop - start, 1e-9)
    tasks = records["tasks"]
    busy = 0.0
    for record in tasks:
        for ss in record["startstops"]:
            if ss["action"] == "compute":
                busy += max(0.0, min(ss["stop"], stop) - max(ss["start"], start))
    capacity = 0.0
    joined: dict[str, float] = {}
    left: dict[str, float] = {}
    for event in records["events"]:
        if event["kind"] == "added":
            joined.setdefault(event["worker"], event["time"])
        elif event["kind"] in ("removed", "died", "restarted"):
            left[event["worker"]] = event["time"]
    threads = 0
    for address, worker in records["workers"].items():
        begin = max(start, joined.get(address, start))
        end = min(stop, left.get(address, stop))
        if end > begin:
            threads += worker["nthreads"]
            capacity += worker["nthreads"] * (end - begin)
    return {
        "wall_time": wall,
        "tasks": len(tasks),
        "errors": sum(r["status"] == "error" for r in tasks),
        "tasks_per_second": len(tasks) / wall,
        "threads": threads,
        "busy": busy / capacity if capacity else 0.0,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], ident: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return (
        f'<table id="{ident}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.figure { margin: 0.5em 0 1em 0; }
.note { color: #666; font-size: 0.85em; }
"""


def render_report(
    records: Mapping[str, Any],
    *,
    code: str = "",
    title: str = "localsched performance report",
    mode: str = "inline",
) -> str:
    """The report page: summary, task stream, progress, prefix table, memory,
    cluster events and the calling code.

    Parameters
    ----------
    records
        :func:`records_of`'s answer.
    code
        The code that opened the block (shown as it is).
    mode
        ``"inline"``: bokeh's JavaScript and CSS inside the page (opens
        offline); ``"cdn"``: links to bokeh's CDN (a smaller file).
    """
    from bokeh.embed import components
    from bokeh.resources import CDN, INLINE

    from localsched.diagnostics import figures

    tasks = records["tasks"]
    start = records["start"]
    table = figures.prefix_table(tasks)
    colors = figures.prefix_colors(row["prefix"] for row in table)
    stream = figures.task_stream_figure(
        tasks, origin=start, spills=records["spills"], colors=colors
    )
    progress = figures.progress_figure(tasks, origin=start, colors=colors)
    limits = {a: w["memory_limit"] for a, w in records["workers"].items()}
    memory = figures.memory_figure(
        records["memory"],
        origin=start,
        limits=limits,
        budget=records["budget"],
        events=[e for e in records["events"] if e["kind"] != "added"],
    )
    script, (stream_div, progress_div, memory_div) = components(
        (stream, progress, memory)
    )
    resources = INLINE if mode == "inline" else CDN
    summary = summary_of(records)
    opened = datetime.datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M:%S")
    summary_rows = [
        ("started", opened),
        ("wall time", _seconds(summary["wall_time"])),
        ("tasks", summary["tasks"]),
        ("errors", summary["errors"]),
        ("tasks/s", f"{summary['tasks_per_second']:.1f}"),
        ("threads", summary["threads"]),
        ("thread busy", f"{100 * summary['busy']:.1f} %"),
    ]
    if records["dropped"]:
        summary_rows.append(("tasks not recorded (oldest)", records["dropped"]))
    prefix_rows = [
        (
            row["prefix"],
            row["count"],
            _seconds(row["total"]),
            _seconds(row["mean"]),
            row["errors"],
            format_bytes(row["nbytes"]),
        )
        for row in table
    ]
    event_rows = [
        (
            datetime.datetime.fromtimestamp(e["time"]).strftime("%H:%M:%S.%f")[:-3],
            e["kind"],
            e["worker"],
            e["detail"],
        )
        for e in records["events"]
    ]
    worker_rows = [
        (
            address,
            w["name"],
            w["nthreads"],
            format_bytes(w["memory_limit"]) if w["memory_limit"] else "none",
        )
        for address, w in records["workers"].items()
    ]
    body = f"""
<h1>{html.escape(title)}</h1>
<h2>Summary</h2>
{_table(("", "value"), summary_rows, "summary")}
<h2>Task stream</h2>
<p class="note">One row per worker thread, one bar per task run, coloured by
prefix; black: the task raised; red: loading its dependencies from shared
memory; triangles on the store's row: results spilled to disk.</p>
<div class="figure">{stream_div}</div>
<h2>Tasks per prefix</h2>
<div class="figure">{progress_div}</div>
{
        _table(
            ("prefix", "count", "total", "mean", "errors", "result bytes"),
            prefix_rows,
            "prefixes",
        )
    }
<h2>Memory</h2>
<p class="note">Results live in the cluster's shared-memory store (managed,
and spilled to disk), not in a worker; each worker's line is its own
(unmanaged) memory. Dotted: worker memory limits; dashed red: the cluster's
memory budget; diamonds: events (hover for detail).</p>
<div class="figure">{memory_div}</div>
<h2>Workers and cluster events</h2>
{_table(("worker", "name", "threads", "memory limit"), worker_rows, "workers")}
{_table(("time", "event", "worker", "detail"), event_rows, "events")}
<h2>Code</h2>
<pre id="code">{html.escape(code)}</pre>
"""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
{resources.render_js()}
{resources.render_css()}
{script}
</head>
<body>
{body}
</body>
</html>
"""


def _calling_code(stacklevel: int) -> str:
    """The source of the code that opened the block, as dask shows it: the
    enclosing function, else the module (nothing if it cannot be read)."""
    frame = inspect.currentframe()
    for _ in range(stacklevel + 1):  # this frame, the context manager's, ...
        if frame is None:
            return ""
        frame = frame.f_back
    if frame is None:
        return ""
    try:
        return inspect.getsource(frame)
    except (OSError, TypeError):
        try:
            return inspect.getsource(inspect.getmodule(frame))  # type: ignore[arg-type]
        except (OSError, TypeError):
            return ""
    finally:
        del frame


class performance_report:
    """Write an HTML report of the work done in a block (dask's
    ``performance_report``).

    The file holds the task stream, tasks per prefix over time with a table per
    prefix, memory over time per worker with pause/terminate/restart events,
    the cluster's events, a summary and the calling code. It is one
    self-contained file: bokeh's resources are inside it, so it opens offline.
    Needs bokeh (``pip install 'localsched[dashboard]'``).

    Parameters
    ----------
    filename : str
        Where to write the report.
    stacklevel : int
        Which frame's code to show: 1 is the one that opened the block.
    mode : {"inline", "cdn", None}
        Where bokeh's JavaScript comes from: ``"inline"`` (None: the default)
        or ``"cdn"`` (a smaller file that needs the network to open).
    storage_options : dict, optional
        Options of ``fsspec.open`` for a remote ``filename`` (fsspec needed).

    Examples
    --------
    >>> with performance_report(filename="dask-report.html"):  # doctest: +SKIP
    ...     x.compute()
    """

    def __init__(
        self,
        filename: str = "dask-report.html",
        stacklevel: int = 1,
        mode: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in (None, "inline", "cdn"):
            raise ValueError(f"mode must be 'inline', 'cdn' or None, got {mode!r}")
        self.filename = filename
        self._stacklevel = stacklevel
        self.mode = mode or "inline"
        self.storage_options = storage_options
        self._client: Any = None
        self._session: int | None = None
        self._code = ""

    def __enter__(self) -> performance_report:
        from localsched.client.task_client import get_client
        from localsched.diagnostics import figures  # noqa: F401 raises without bokeh

        self._code = _calling_code(self._stacklevel)
        self._client = get_client()
        self._session = self._client._ask(rq.StartRecording())
        return self

    def __exit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        data = self._client._ask(rq.StopRecording(session=session))
        page = render_report(records_of(data), code=self._code, mode=self.mode)
        self._write(page)

    async def __aenter__(self) -> performance_report:
        code = _calling_code(self._stacklevel)
        await asyncio.to_thread(self.__enter__)
        self._code = code
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.__exit__, *exc)

    def _write(self, page: str) -> None:
        if self.storage_options is not None or "://" in str(self.filename):
            import fsspec

            with fsspec.open(
                self.filename,
                mode="w",
                encoding="utf-8",
                **(self.storage_options or {}),
            ) as f:
                f.write(page)
            return
        with open(os.fspath(self.filename), "w", encoding="utf-8") as f:
            f.write(page)
