"""``client.dashboard()`` in Jupyter: a live panel, without a port.

The panel is HTML published once with a display id and redrawn in place from
a thread, as the progress bar does (``progressbar.py``): no server, no
ipywidgets, no JavaScript, so it works in every notebook front end and in an
exported notebook (which keeps the last frame). Each frame is built from one
``LiveData`` sample (``live_data.py``): progress per prefix, memory and
processing per worker, and a compact task stream of the last seconds drawn
as SVG rectangles.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from localsched.diagnostics.live_data import ERROR_COLOUR, LiveData
from localsched.units import format_bytes

#: Seconds of task stream the panel shows.
STREAM_SECONDS = 30.0
_STREAM_WIDTH = 600
_LANE_HEIGHT = 10


class NotebookDashboard:
    """A live panel of a cluster for Jupyter; see ``Client.dashboard``.

    Parameters
    ----------
    cluster
        The ``LocalCluster`` to show.
    interval
        Seconds between redraws.
    duration
        Stop redrawing after this many seconds (default: until the cluster
        closes or :meth:`stop`).
    until
        Futures: stop redrawing once they are all done.
    """

    def __init__(
        self,
        cluster: Any,
        *,
        interval: float = 1.0,
        duration: float | None = None,
        until: Iterable[Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.interval = interval
        self.data = LiveData(cluster, min_interval=min(0.2, interval / 2))
        self.data.start()
        self._deadline = None if duration is None else time.monotonic() + duration
        self._futures = list(until or ())
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        #: The text of the last frame drawn (what ``repr`` showed then).
        self.last_text = ""
        cluster.live_views.add(self)

    # -- drawing ---------------------------------------------------------------------

    def _repr_html_(self) -> str:
        return panel_html(self.data)

    def __repr__(self) -> str:
        summary = self.data.summary()
        tasks = ", ".join(f"{s} {n}" for s, n in summary["tasks"].items())
        return (
            f"<localsched dashboard: {summary['cluster']}, workers "
            f"{summary['workers']}, processing {summary['processing']}, "
            f"tasks: {tasks or 'none'}>"
        )

    def _bundle(self) -> dict[str, str]:
        bundle = {"text/html": self._repr_html_(), "text/plain": repr(self)}
        self.last_text = bundle["text/plain"]
        return bundle

    def _ipython_display_(self) -> None:
        """Show the panel once and redraw it in place from a thread."""
        if self._handle is not None:
            return
        from IPython.display import display

        self._handle = display(
            self._bundle(),
            raw=True,
            display_id=f"localsched-dashboard-{uuid.uuid4().hex}",
        )
        self._thread = threading.Thread(
            target=self._redraw_until_done,
            name="localsched-notebook-dashboard",
            daemon=True,
        )
        self._thread.start()

    def _is_done(self) -> bool:
        if self._stopped.is_set() or self.cluster.status != "running":
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return True
        return bool(self._futures) and all(f.done() for f in self._futures)

    def _redraw_until_done(self) -> None:
        while not self._is_done():
            self._stopped.wait(self.interval)
            if not self._stopped.is_set():
                self.redraw()

    def redraw(self) -> None:
        """Draw the current state now."""
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def stop(self) -> None:
        """Stop redrawing, after drawing the last state (the cluster closing
        calls this from the closing cell, where the update reaches the page)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.redraw()


def _bar(parts: list[tuple[float, str]], width: int = 200, title: str = "") -> str:
    """A horizontal bar of coloured parts, each a fraction of ``width``."""
    spans = "".join(
        f'<span style="display:inline-block;height:12px;'
        f'width:{max(0.0, f) * width:.1f}px;background:{colour}"></span>'
        for f, colour in parts
        if f > 0
    )
    return (
        f'<span title="{html.escape(title)}" style="display:inline-block;'
        f"width:{width}px;height:12px;background:#eee;line-height:0;"
        f'white-space:nowrap;overflow:hidden">{spans}</span>'
    )


def _progress_rows(data: LiveData) -> str:
    p = data.progress_columns()
    rows = []
    for i, prefix in enumerate(p["prefix"]):
        total, done, erred = p["total"][i], p["done"][i], p["erred"][i]
        bar = _bar(
            [
                (done / total, p["colour"][i]),
                (erred / total, ERROR_COLOUR),
                (p["processing"][i] / total, "#c7c7c7"),
            ],
            title=f"{done} done, {erred} erred, {p['processing'][i]} processing",
        )
        errors = f' <span style="color:{ERROR_COLOUR}">{erred} erred</span>'
        rows.append(
            f"<tr><td>{html.escape(prefix)}</td><td>{bar}</td>"
            f"<td>{done + erred}/{total}{errors if erred else ''}</td></tr>"
        )
    return "".join(rows) or "<tr><td>no tasks</td></tr>"


def _worker_rows(data: LiveData) -> str:
    w = data.worker_columns()
    scale = max([*w["total"], *w["memory_limit"], 1])
    most = max([*w["processing"], *w["nthreads"], 1])
    rows = []
    for i, name in enumerate(w["worker"]):
        managed, unmanaged = w["managed"][i], w["unmanaged"][i]
        memory = _bar(
            [(managed / scale, "#1f77b4"), (unmanaged / scale, "#aec7e8")],
            title=w["memory_text"][i],
        )
        processing = _bar(
            [
                (w["executing"][i] / most, "#9467bd"),
                ((w["processing"][i] - w["executing"][i]) / most, "#c5b0d5"),
            ],
            width=100,
        )
        limit = w["memory_limit"][i]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{memory}</td>"
            f"<td>{format_bytes(managed + unmanaged)}"
            f"{' / ' + format_bytes(limit) if limit else ''}</td>"
            f"<td>{processing}</td><td>{w['processing'][i]}</td></tr>"
        )
    return "".join(rows)


def _task_stream_svg(data: LiveData) -> str:
    t = data.task_stream_columns(seconds=STREAM_SECONDS)
    if not t["start"]:
        return f"<div>no tasks in the last {STREAM_SECONDS:.0f} s</div>"
    now = time.time() * 1000
    # From the first task shown (at least 5 s back) to now: a short burst
    # fills the width instead of a sliver at the right edge.
    span = min(max(now - min(t["start"]), 5000.0), STREAM_SECONDS * 1000)
    begin = now - span
    rows = sorted(set(t["row"]))
    position = {row: i for i, row in enumerate(rows)}
    scale = _STREAM_WIDTH / span
    rects = []
    for i, start in enumerate(t["start"]):
        x = max(0.0, (start - begin) * scale)
        width = max(1.0, t["duration"][i] * scale)
        y = position[t["row"][i]] * _LANE_HEIGHT
        rects.append(
            f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" '
            f'height="{_LANE_HEIGHT - 2}" fill="{t["colour"][i]}">'
            f"<title>{html.escape(t['key'][i])} on {html.escape(t['lane'][i])}: "
            f"{t['duration'][i]:.1f} ms</title></rect>"
        )
    height = len(rows) * _LANE_HEIGHT
    return (
        f'<svg class="localsched-task-stream" width="{_STREAM_WIDTH}" '
        f'height="{height}" style="background:#fafafa">{"".join(rects)}</svg>'
        f"<div style='font-size:0.8em;color:#666'>last {span / 1000:.0f} s, "
        "one row per worker thread</div>"
    )


def panel_html(data: LiveData) -> str:
    """The panel's HTML from a ``LiveData``: header, progress, workers, stream."""
    s = data.summary()
    tasks = ", ".join(f"{state} {n}" for state, n in s["tasks"].items()) or "none"
    cell = "padding:1px 8px;text-align:left"
    return (
        f'<div class="localsched-dashboard" style="font-size:0.9em">'
        f"<style>.localsched-dashboard td {{{cell}}}</style>"
        f"<strong>{html.escape(s['cluster'])}</strong> {html.escape(s['status'])}"
        f" · workers {s['workers']} · threads {s['threads']}"
        f" · processing {s['processing']} · tasks: {html.escape(tasks)}"
        f" · {time.strftime('%H:%M:%S')}"
        "<div><strong>progress</strong></div>"
        f"<table>{_progress_rows(data)}</table>"
        "<div><strong>workers</strong> (memory: managed, unmanaged; "
        "processing: executing, queued)</div>"
        f"<table>{_worker_rows(data)}</table>"
        "<div><strong>task stream</strong></div>"
        f"{_task_stream_svg(data)}</div>"
    )
