"""bokeh figures of the live dashboard, one function per figure.

Each builder takes a bokeh data source holding the columns of the matching
``LiveData.*_columns`` method (``localsched.diagnostics.live_data``) and returns a
figure; it never reads the cluster. The web dashboard passes ``AjaxDataSource``s
that poll its JSON endpoints, so the figures update in the browser without a
websocket. Any builder with the same signature can replace one of these (the
report's figures, say): ``FIGURES`` maps the page's slots to builders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Height of one row (worker thread, prefix, worker) in pixels.
ROW_HEIGHT = 22


def _figure(title: str, rows: int = 4, **kwargs: Any) -> Any:
    from bokeh.models import DataRange1d
    from bokeh.plotting import figure

    fig = figure(
        title=title,
        sizing_mode="stretch_width",
        toolbar_location="above",
        tools="pan,xwheel_zoom,box_zoom,reset,save",
        **kwargs,
    )
    fig.yaxis.visible = False
    fig.ygrid.visible = False
    # Rows keep their height with few of them: at least ``rows`` rows shown.
    fig.y_range = DataRange1d(min_interval=rows, flipped=True, range_padding=0.1)
    fig.outline_line_color = None
    return fig


def task_stream_figure(source: Any) -> Any:
    """One bar per task run, a row per worker thread, coloured by prefix."""
    from bokeh.models import HoverTool

    fig = _figure("Task stream", height=260, x_axis_type="datetime")
    fig.rect(
        source=source,
        x="middle",
        y="row",
        width="duration",
        height=0.8,
        fill_color="colour",
        line_color="colour",
        line_alpha=0.6,
    )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("key", "@key"),
                ("worker", "@lane"),
                ("start", "@start{%H:%M:%S.%3N}"),
                ("duration", "@duration{0,0.0} ms"),
                ("status", "@status"),
            ],
            formatters={"@start": "datetime"},
        )
    )
    return fig


def progress_figure(source: Any) -> Any:
    """A bar per task prefix: done (its colour), erred (red), processing."""
    from bokeh.models import HoverTool

    fig = _figure("Progress", height=240, x_range=(0, 1))
    fig.xaxis.visible = False
    fig.hbar(
        source=source,
        y="index",
        left=0,
        right=1,
        height=0.8,
        fill_color="#eeeeee",
        line_color=None,
    )
    fig.hbar(
        source=source,
        y="index",
        left="erred_fraction",
        right="processing_fraction",
        height=0.8,
        fill_color="colour",
        fill_alpha=0.3,
        line_color=None,
    )
    fig.hbar(
        source=source,
        y="index",
        left="done_fraction",
        right="erred_fraction",
        height=0.8,
        fill_color="#d62728",
        line_color=None,
    )
    fig.hbar(
        source=source,
        y="index",
        left=0,
        right="done_fraction",
        height=0.8,
        fill_color="colour",
        line_color=None,
    )
    fig.text(
        source=source,
        x=0.01,
        y="index",
        text="label",
        text_baseline="middle",
        text_font_size="11px",
    )
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("prefix", "@prefix"),
                ("done", "@done / @total"),
                ("erred", "@erred"),
                ("processing", "@processing"),
                ("waiting", "@waiting"),
            ]
        )
    )
    return fig


def memory_figure(source: Any) -> Any:
    """Memory per worker: managed (results) and unmanaged, against the limit."""
    from bokeh.models import DataRange1d, HoverTool, NumeralTickFormatter

    fig = _figure("Memory per worker", height=200)
    fig.xaxis.formatter = NumeralTickFormatter(format="0.0 b")
    managed = fig.hbar(
        source=source,
        y="index",
        left=0,
        right="managed",
        height=0.8,
        fill_color="#1f77b4",
        line_color=None,
        legend_label="managed",
    )
    unmanaged = fig.hbar(
        source=source,
        y="index",
        left="managed",
        right="total",
        height=0.8,
        fill_color="#1f77b4",
        fill_alpha=0.4,
        line_color=None,
        legend_label="unmanaged",
    )
    fig.scatter(
        source=source,
        x="memory_limit",
        y="index",
        marker="dash",
        angle=1.5708,
        size=16,
        line_color="#d62728",
        line_width=2,
        legend_label="limit",
    )
    # Scaled to the memory used: the limit's mark shows once memory nears it
    # (a limit of many GiB would flatten every bar).
    fig.x_range = DataRange1d(renderers=[managed, unmanaged], start=0)
    _labels(fig, source, "memory_label")
    fig.legend.location = "bottom_right"
    fig.legend.orientation = "horizontal"
    fig.add_tools(
        HoverTool(tooltips=[("worker", "@worker"), ("memory", "@memory_text")])
    )
    return fig


def processing_figure(source: Any) -> Any:
    """Tasks processing (sent, not finished) and executing per worker."""
    from bokeh.models import DataRange1d, HoverTool

    fig = _figure("Processing per worker", height=200, x_range=DataRange1d(start=0))
    fig.hbar(
        source=source,
        y="index",
        left=0,
        right="processing",
        height=0.8,
        fill_color="#9467bd",
        fill_alpha=0.4,
        line_color=None,
        legend_label="processing",
    )
    fig.hbar(
        source=source,
        y="index",
        left=0,
        right="executing",
        height=0.8,
        fill_color="#9467bd",
        line_color=None,
        legend_label="executing",
    )
    _labels(fig, source, "processing_label")
    fig.legend.location = "bottom_right"
    fig.legend.orientation = "horizontal"
    fig.add_tools(
        HoverTool(
            tooltips=[
                ("worker", "@worker"),
                ("processing", "@processing"),
                ("executing", "@executing of @nthreads threads"),
            ]
        )
    )
    return fig


def _labels(fig: Any, source: Any, column: str) -> None:
    """The text of ``column`` at the start of each row."""
    from bokeh.models import LabelSet

    fig.add_layout(
        LabelSet(
            source=source,
            x=0,
            y="index",
            text=column,
            x_units="screen",
            x_offset=4,
            text_baseline="middle",
            text_font_size="11px",
        )
    )


def table_figure(source: Any, columns: list[tuple[str, str, int]]) -> Any:
    """A table of ``(field, title, width)`` columns (workers and events pages)."""
    from bokeh.models import DataTable, TableColumn

    return DataTable(
        source=source,
        columns=[TableColumn(field=f, title=t, width=w) for f, t, w in columns],
        sizing_mode="stretch_width",
        height=400,
        index_position=None,
        # Reordering columns needs jquery-ui, which bokeh does not ship.
        reorderable=False,
    )


#: Slot of the status page -> (data endpoint, builder).
FIGURES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "task-stream": ("task-stream", task_stream_figure),
    "progress": ("progress", progress_figure),
    "memory": ("workers", memory_figure),
    "processing": ("workers", processing_figure),
}
