"""Bokeh figures of what the cluster did, built from plain records.

Shared by ``performance_report``, ``get_task_stream(plot=...)`` and the live
dashboard: every builder takes plain data (lists of dicts, as
``Client.get_task_stream`` returns) and returns a bokeh model, so it does not
care whether the records came from a recording, the task stream plugin or a
live poll. To update a figure live, build it once and replace its source's
data with :func:`task_stream_columns` (or the other ``*_columns`` functions) of
the new records: the column names are the figure's.

Records
-------
task record (``get_task_stream``'s shape, extended)
    ``key``, ``worker`` (address), ``status`` (``"OK"`` or ``"error"``),
    ``startstops``: ``[{"action": "compute" | "transfer", "start", "stop"}]``
    (``time.time()`` values; ``"transfer"`` is loading the dependencies'
    values, from shared memory here), optional ``thread`` (the task thread's
    id: one row each; without it tasks are packed into rows per worker),
    ``nbytes``, ``exception_text``.
memory sample
    ``time``, ``managed`` (bytes in the shared store), ``spilled`` (bytes on
    disk), ``unmanaged``: ``{address: bytes}`` (each worker's own memory).
event
    ``time``, ``kind`` (``added``, ``removed``, ``died``, ``restarted``,
    ``paused``, ``resumed``, ``terminated``, ``restarting``, ``spilled``),
    ``worker``, ``detail``.

Importing this module without bokeh raises ``ImportError`` naming the extra
that installs it (``pip install localsched[dashboard]``).
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:
    from bokeh.models import (
        ColumnDataSource,
        DataRange1d,
        FixedTicker,
        HoverTool,
        Range1d,
    )
    from bokeh.palettes import Category20, Category20b
    from bokeh.plotting import figure as _figure
except ImportError as exc:  # pragma: no cover - the extra's absence is tested
    raise ImportError(
        "localsched's figures (performance_report, get_task_stream(plot=...), "
        "the dashboard) need bokeh: pip install 'localsched[dashboard]'"
    ) from exc

from localsched.keys import key_split
from localsched.units import format_bytes

__all__ = [
    "ERROR_COLOR",
    "TRANSFER_COLOR",
    "memory_figure",
    "prefix_colors",
    "prefix_table",
    "progress_columns",
    "progress_figure",
    "save_figure",
    "task_stream_columns",
    "task_stream_figure",
    "task_stream_rows",
]

#: Bars of tasks that raised, and of loading dependencies (dask's colours).
ERROR_COLOR = "black"
TRANSFER_COLOR = "red"
# Distinct hues first (Category20's dark shades, then its light ones, then
# Category20b), without the reds that mark loads and deaths.
_PALETTE = [
    c
    for c in (*Category20[20][::2], *Category20[20][1::2], *Category20b[20])
    if c not in ("#d62728", "#ff9896")
]
_EVENT_COLORS = {
    "added": "green",
    "removed": "gray",
    "died": "red",
    "restarted": "orange",
    "restarting": "orange",
    "paused": "purple",
    "resumed": "purple",
    "terminated": "red",
    "spilled": "saddlebrown",
}


def prefix_colors(prefixes: Iterable[str]) -> dict[str, str]:
    """A colour per prefix, in the order given (the palette cycles past 38)."""
    colors = itertools.cycle(_PALETTE)
    return {prefix: next(colors) for prefix in dict.fromkeys(prefixes)}


def _compute_span(record: Mapping[str, Any]) -> tuple[float, float]:
    for ss in record.get("startstops") or ():
        if ss["action"] == "compute":
            return ss["start"], ss["stop"]
    return 0.0, 0.0


def task_stream_rows(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """Each record's row, ``(worker, thread)``, in record order.

    With ``thread`` in the records, one row per worker thread. Without it,
    a worker's tasks are packed into the fewest rows that keep bars from
    overlapping (as many as the threads that ran at once).
    """
    rows: list[tuple[str, Any]] = [("", 0)] * len(records)
    lanes: dict[str, list[float]] = {}  # worker -> each lane's last stop
    order = sorted(range(len(records)), key=lambda i: _compute_span(records[i])[0])
    for i in order:
        record = records[i]
        worker = str(record.get("worker"))
        thread = record.get("thread")
        if thread is not None:
            rows[i] = (worker, thread)
            continue
        start, stop = _compute_span(record)
        ends = lanes.setdefault(worker, [])
        for lane, end in enumerate(ends):
            if end <= start:
                ends[lane] = stop
                break
        else:
            lane = len(ends)
            ends.append(stop)
        rows[i] = (worker, lane)
    return rows


def _row_labels(rows: Iterable[tuple[str, Any]]) -> dict[tuple[str, Any], str]:
    """Row -> label: workers in address order, threads numbered per worker."""
    per_worker: dict[str, list[Any]] = {}
    for worker, thread in rows:
        threads = per_worker.setdefault(worker, [])
        if thread not in threads:
            threads.append(thread)
    labels = {}
    for worker in sorted(per_worker, key=_address_order):
        for n, thread in enumerate(per_worker[worker]):
            labels[worker, thread] = f"{_short(worker)} · thread {n}"
    return labels


def _address_order(address: str) -> tuple[str, int]:
    head, _, tail = address.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (address, -1)


def _short(address: str) -> str:
    """``local://123/4`` -> ``worker 4``."""
    tail = address.rpartition("/")[2]
    return f"worker {tail}" if tail.isdigit() else address


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def task_stream_columns(
    records: Sequence[Mapping[str, Any]],
    origin: float,
    colors: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[Any]], dict[tuple[str, Any], int], dict[int, str]]:
    """The task stream figure's source data: one bar per startstop.

    Returns ``(columns, row index by (worker, thread), label by row index)``.
    ``x`` values are seconds after ``origin``.
    """
    rows = task_stream_rows(records)
    labels = _row_labels(rows)
    index = {row: i for i, row in enumerate(labels)}
    colors = dict(colors or {})
    missing = [key_split(r["key"]) for r in records]
    colors.update(prefix_colors(p for p in missing if p not in colors))
    names = "y bottom top left right color key prefix worker row action status"
    cols: dict[str, list[Any]] = {n: [] for n in (*names.split(), "start", "duration")}
    for record, row in zip(records, rows, strict=True):
        prefix = key_split(record["key"])
        erred = record.get("status") == "error"
        for ss in record.get("startstops") or ():
            action = ss["action"]
            if action == "compute":
                color = ERROR_COLOR if erred else colors[prefix]
            else:
                color = TRANSFER_COLOR
            y = index[row]
            cols["y"].append(y)
            cols["bottom"].append(y - 0.4)
            cols["top"].append(y + 0.4)
            cols["left"].append(ss["start"] - origin)
            cols["right"].append(ss["stop"] - origin)
            cols["color"].append(color)
            cols["key"].append(str(record["key"]))
            cols["prefix"].append(prefix)
            cols["worker"].append(str(record.get("worker")))
            cols["row"].append(labels[row])
            cols["action"].append(
                "load inputs (shared memory)" if action == "transfer" else action
            )
            cols["status"].append(record.get("status", "OK"))
            cols["start"].append(_clock(ss["start"]))
            cols["duration"].append(_duration(ss["stop"] - ss["start"]))
    return cols, index, {i: labels[row] for row, i in index.items()}


def task_stream_figure(
    records: Sequence[Mapping[str, Any]],
    *,
    origin: float | None = None,
    spills: Sequence[Mapping[str, Any]] = (),
    colors: Mapping[str, str] | None = None,
    **figure_options: Any,
) -> Any:
    """The task stream: one row per worker thread, one bar per task.

    Compute bars take their prefix's colour (black: the task raised); red bars
    before them are the loading of their dependencies' values. ``spills``
    (events of kind ``spilled``) are marked on a row of their own, ``store``.
    Hover shows key, worker, start and duration.

    Parameters
    ----------
    records
        Task records (module docstring).
    origin
        ``time.time()`` of x = 0 (default: the first start).
    spills
        Events to mark on the store's row.
    colors
        Colours of prefixes (:func:`prefix_colors`); others are added.
    figure_options
        Passed to ``bokeh.plotting.figure`` (``height``, ``sizing_mode``...).

    Returns
    -------
    bokeh.plotting.figure
        Its bars' source is named ``task-stream`` (columns:
        :func:`task_stream_columns`).
    """
    if origin is None:
        origin = min(
            (ss["start"] for r in records for ss in r.get("startstops") or ()),
            default=0.0,
        )
    cols, index, labels = task_stream_columns(records, origin, colors)
    store_row = len(index)
    if spills:
        labels[store_row] = "store (spills)"
    options: dict[str, Any] = {
        "title": "Task stream",
        "height": max(160, 40 + 22 * len(labels)),
        "sizing_mode": "stretch_width",
        "x_axis_label": "seconds",
        "tools": "xpan,xwheel_zoom,box_zoom,reset,save",
        "toolbar_location": "above",
        "y_range": Range1d(start=len(labels) - 0.5, end=-0.5),
    }
    options.update(figure_options)
    fig = _figure(**options)
    source = ColumnDataSource(cols, name="task-stream")
    bars = fig.quad(
        left="left",
        right="right",
        bottom="bottom",
        top="top",
        source=source,
        fill_color="color",
        line_color="white",  # adjacent bars stay apart
        line_width=0.5,
        name="task-stream-bars",
    )
    fig.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[
                ("key", "@key"),
                ("worker", "@row"),
                ("action", "@action"),
                ("start", "@start"),
                ("duration", "@duration"),
                ("status", "@status"),
            ],
        )
    )
    if spills:
        marks = ColumnDataSource(
            {
                "x": [e["time"] - origin for e in spills],
                "y": [store_row] * len(spills),
                "detail": [e.get("detail", "") for e in spills],
                "start": [_clock(e["time"]) for e in spills],
            },
            name="task-stream-spills",
        )
        glyph = fig.scatter(
            "x",
            "y",
            source=marks,
            marker="inverted_triangle",
            size=10,
            color=_EVENT_COLORS["spilled"],
        )
        fig.add_tools(
            HoverTool(
                renderers=[glyph],
                tooltips=[("spilled", "@detail"), ("at", "@start")],
            )
        )
    fig.yaxis.ticker = FixedTicker(ticks=list(labels))
    overrides: dict[Any, Any] = dict(labels)  # bokeh types its keys loosely
    fig.yaxis.major_label_overrides = overrides
    fig.ygrid.grid_line_color = None
    return fig


def prefix_table(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per prefix, most time first: ``prefix``, ``count``, ``total``
    and ``mean`` compute seconds, ``errors``, ``nbytes`` (result bytes)."""
    table: dict[str, dict[str, Any]] = {}
    for record in records:
        prefix = key_split(record["key"])
        row = table.get(prefix)
        if row is None:
            row = table[prefix] = {
                "prefix": prefix,
                "count": 0,
                "total": 0.0,
                "errors": 0,
                "nbytes": 0,
            }
        start, stop = _compute_span(record)
        row["count"] += 1
        row["total"] += stop - start
        if record.get("status") == "error":
            row["errors"] += 1
        else:
            row["nbytes"] += max(0, record.get("nbytes") or 0)
    for row in table.values():
        row["mean"] = row["total"] / row["count"]
    return sorted(table.values(), key=lambda row: -row["total"])


def progress_columns(
    records: Sequence[Mapping[str, Any]], origin: float
) -> dict[str, dict[str, list[float]]]:
    """Prefix -> ``{"x": seconds after origin, "y": tasks done by then}``,
    one point per task end (a step line)."""
    stops: dict[str, list[float]] = {}
    for record in records:
        stop = _compute_span(record)[1]
        stops.setdefault(key_split(record["key"]), []).append(stop - origin)
    out = {}
    for prefix, times in stops.items():
        times.sort()
        out[prefix] = {
            "x": [0.0, *times],
            "y": [0, *range(1, len(times) + 1)],
        }
    return out


def progress_figure(
    records: Sequence[Mapping[str, Any]],
    *,
    origin: float | None = None,
    colors: Mapping[str, str] | None = None,
    **figure_options: Any,
) -> Any:
    """Tasks done per prefix over time: one step line per prefix.

    Returns
    -------
    bokeh.plotting.figure
        Each line's source is named ``progress-<prefix>``.
    """
    if origin is None:
        origin = min((_compute_span(r)[0] for r in records), default=0.0)
    columns = progress_columns(records, origin)
    colors = dict(colors or {})
    colors.update(prefix_colors(p for p in columns if p not in colors))
    options: dict[str, Any] = {
        "title": "Tasks done per prefix",
        "height": 300,
        "sizing_mode": "stretch_width",
        "x_axis_label": "seconds",
        "y_axis_label": "tasks done",
        "tools": "xpan,xwheel_zoom,box_zoom,reset,save",
        "toolbar_location": "above",
    }
    options.update(figure_options)
    fig = _figure(**options)
    for prefix, data in columns.items():
        source = ColumnDataSource(data, name=f"progress-{prefix}")
        fig.step(
            "x",
            "y",
            source=source,
            mode="after",
            color=colors[prefix],
            line_width=2,
            legend_label=prefix,
        )
    if columns:
        fig.legend.location = "top_left"
        fig.legend.click_policy = "hide"
    return fig


def memory_figure(
    samples: Sequence[Mapping[str, Any]],
    *,
    origin: float | None = None,
    limits: Mapping[str, int] | None = None,
    budget: int = 0,
    events: Sequence[Mapping[str, Any]] = (),
    **figure_options: Any,
) -> Any:
    """Memory over time: each worker's own (unmanaged) memory, the shared
    store's managed and spilled bytes, against the limits, with events.

    Parameters
    ----------
    samples
        Memory samples (module docstring), oldest first.
    limits
        Worker address -> its ``memory_limit`` (dotted lines, one per value).
    budget
        The cluster's memory budget (dashed red line, unless a worker's limit
        equals it); 0: none.
    events
        Events to mark (pause, terminate, restart, deaths...), hover for detail.

    Returns
    -------
    bokeh.plotting.figure
        Sources named ``memory-managed`` and ``memory-<address>``.
    """
    if origin is None:
        origin = samples[0]["time"] if samples else 0.0
    options: dict[str, Any] = {
        "title": "Memory",
        "height": 300,
        "y_range": DataRange1d(only_visible=True),
        "sizing_mode": "stretch_width",
        "x_axis_label": "seconds",
        "y_axis_label": "bytes",
        "tools": "xpan,xwheel_zoom,box_zoom,reset,save",
        "toolbar_location": "above",
    }
    options.update(figure_options)
    fig = _figure(**options)
    x = [s["time"] - origin for s in samples]
    top = 0
    for name, field, dash in (
        ("managed", "managed", "solid"),
        ("spilled", "spilled", "dashed"),
    ):
        values = [s.get(field, 0) for s in samples]
        top = max(top, *values, 0)
        source = ColumnDataSource(
            {"x": x, "y": values, "text": [format_bytes(v) for v in values]},
            name=f"memory-{name}",
        )
        line = fig.line(
            "x",
            "y",
            source=source,
            color="black",
            line_width=2,
            line_dash=dash,
            legend_label=f"{name} (shared store)",
        )
        fig.add_tools(HoverTool(renderers=[line], tooltips=[(name, "@text")]))
    workers = sorted(
        {a for s in samples for a in s.get("unmanaged", {})}, key=_address_order
    )
    colors = itertools.cycle(_PALETTE)
    for address in workers:
        values = [s.get("unmanaged", {}).get(address) for s in samples]
        points = [(xi, v) for xi, v in zip(x, values, strict=True) if v is not None]
        top = max(top, *(v for _, v in points), 0)
        source = ColumnDataSource(
            {
                "x": [p[0] for p in points],
                "y": [p[1] for p in points],
                "text": [format_bytes(p[1]) for p in points],
            },
            name=f"memory-{address}",
        )
        line = fig.line(
            "x",
            "y",
            source=source,
            color=next(colors),
            line_width=1.5,
            legend_label=f"{_short(address)} unmanaged",
        )
        fig.add_tools(
            HoverTool(renderers=[line], tooltips=[(_short(address), "@text")])
        )
    # Limits are lines with a legend entry: the y range includes them, and
    # hiding one (click its legend) zooms onto the data (only_visible).
    span = [x[0], x[-1]] if x else [0.0, 1.0]
    limit_values = sorted({v for v in (limits or {}).values() if v})
    for value in limit_values:
        fig.line(
            span,
            [value, value],
            line_dash="dotted",
            color="gray",
            legend_label="worker memory limit",
        )
    if budget and budget not in limit_values:
        fig.line(
            span,
            [budget, budget],
            line_dash="dashed",
            color="red",
            legend_label="cluster budget",
        )
    if events:
        marks = ColumnDataSource(
            {
                "x": [e["time"] - origin for e in events],
                "y": [max(top, *limit_values, budget) * 1.02 or 1] * len(events),
                "color": [_EVENT_COLORS.get(e["kind"], "gray") for e in events],
                "kind": [e["kind"] for e in events],
                "worker": [_short(e.get("worker") or "") for e in events],
                "detail": [e.get("detail", "") for e in events],
            },
            name="memory-events",
        )
        glyph = fig.scatter(
            "x", "y", source=marks, color="color", marker="diamond", size=11
        )
        fig.add_tools(
            HoverTool(
                renderers=[glyph],
                tooltips=[("event", "@kind"), ("worker", "@worker"), ("", "@detail")],
            )
        )
    fig.yaxis.formatter = _bytes_formatter()
    fig.legend.location = "top_left"
    fig.legend.click_policy = "hide"
    return fig


def _bytes_formatter() -> Any:
    from bokeh.models import CustomJSTickFormatter

    return CustomJSTickFormatter(
        code="""
        const units = ['B', 'kiB', 'MiB', 'GiB', 'TiB'];
        let v = tick, i = 0;
        while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
        return (i ? v.toFixed(1) : v.toFixed(0)) + ' ' + units[i];
        """
    )


def save_figure(
    fig: Any, filename: str, *, title: str = "Dask Task Stream", resources: Any = None
) -> str:
    """Write ``fig`` to a standalone HTML file; bokeh's resources inline unless
    ``resources`` says otherwise (e.g. ``bokeh.resources.CDN``). Returns the
    file name."""
    from bokeh.io import save
    from bokeh.resources import INLINE

    return str(save(fig, filename=filename, resources=resources or INLINE, title=title))
