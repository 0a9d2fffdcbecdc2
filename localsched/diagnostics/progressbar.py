"""``progress``: one bar per task prefix, in a terminal, a log or a notebook.

One implementation draws everywhere with rich: a live table in a terminal
(``rich.live.Live``), HTML exported by rich in Jupyter (published with a display
id and updated in place, so no ipywidgets extension is needed). When the output
is not a terminal (a pipe, a CI log, pytest's ``capsys``) it writes dask's
``TextProgressBar`` instead: the text bar redrawn after ``\\r``, e.g.
``\\r[########################################] | 100% Completed |  1.2s``.
Every mode ends with that line.
Counts come from a ``ProgressTracker`` plugin registered for the bar's life.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from localsched.diagnostics.progress_tracker import (
    PrefixProgress,
    ProgressSnapshot,
    ProgressTracker,
)

#: Width of the ``[####    ]`` part of the text line, as dask's text bar.
TEXT_WIDTH = 40


def format_time(seconds: float) -> str:
    """`` 1.2s``, ``16min 40.4s``, ``27hr 46min 40.4s``: dask's ``format_time``."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours:2.0f}hr {minutes:2.0f}min {secs:4.1f}s"
    if minutes:
        return f"{minutes:2.0f}min {secs:4.1f}s"
    return f"{secs:4.1f}s"


def text_line(snapshot: ProgressSnapshot, width: int = TEXT_WIDTH) -> str:
    """dask's text bar: ``[####      ] | 10% Completed |  1.2s`` (+ errors).

    Rounded down as dask's ``TextProgressBar``: it reads 100% only when every
    task finished.
    """
    fraction = snapshot.fraction
    filled = int(width * fraction)
    line = (
        f"[{'#' * filled:<{width}}] | {int(100 * fraction)}% Completed | "
        f"{format_time(snapshot.elapsed)}"
    )
    if snapshot.erred:
        line += f" | {snapshot.erred} erred"
    return line


def _rate_and_eta(p: PrefixProgress, elapsed: float) -> tuple[str, str]:
    # A finished prefix's rate is over the time it took, not the bar's life.
    seconds = elapsed if p.remaining else p.active
    if seconds < 0.05 or p.finished < 2:  # a rate over no time means nothing
        return "", ""
    rate = p.finished / seconds
    rate_text = f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.1f}/s"
    if p.remaining == 0:
        return rate_text, ""
    return rate_text, f"ETA {format_time(p.remaining / rate)}"


class ProgressView:
    """A rich renderable of a snapshot: one bar per prefix (or one in all)."""

    def __init__(self, snapshot: ProgressSnapshot, multi: bool = True) -> None:
        self.snapshot = snapshot
        self.multi = multi

    def _rows(self) -> list[PrefixProgress]:
        snapshot = self.snapshot
        if self.multi:
            return sorted(snapshot.prefixes, key=lambda p: p.name)
        return [
            PrefixProgress(
                "all",
                snapshot.total,
                snapshot.done,
                snapshot.erred,
                sum(p.cancelled for p in snapshot.prefixes),
            )
        ]

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar as Bar
        from rich.table import Table
        from rich.text import Text

        snapshot = self.snapshot
        table = Table.grid(padding=(0, 1))
        for justify in ("right", "left", "right", "right", "right", "left"):
            table.add_column(justify=justify)
        for p in self._rows():
            style = "red" if p.erred else ("green" if p.remaining == 0 else "cyan")
            bar = Bar(
                total=max(p.total, 1),
                completed=p.finished if p.total else 1,
                width=30,
                complete_style=style,
                finished_style=style,
            )
            rate, eta = _rate_and_eta(p, snapshot.elapsed)
            errors = Text(f"{p.erred} erred", style="bold red") if p.erred else ""
            table.add_row(p.name, bar, f"{p.finished}/{p.total}", rate, eta, errors)
        status = Text(text_line(snapshot))
        if snapshot.erred:
            status.stylize("red")
        parts: list[Any] = [table, status]
        if snapshot.first_error is not None and snapshot.complete:
            key, error = snapshot.first_error
            parts.append(Text(f"first error: {key!r}: {error}", style="red"))
        return Group(*parts)


def render_html(renderable: Any, width: int = 100) -> str:
    """HTML of a rich renderable, as rich exports it (inline styles)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), record=True, width=width, force_jupyter=False)
    console.print(renderable)
    return console.export_html(
        inline_styles=True,
        code_format=(
            '<pre class="localsched" style="font-family:Menlo,\'DejaVu Sans Mono\','
            "consolas,'Courier New',monospace;line-height:1.3\">{code}</pre>"
        ),
    )


def in_notebook() -> bool:
    """True in a Jupyter kernel (dask's ``is_kernel``)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class ProgressBar:
    """A progress display over futures; see ``progress``.

    Parameters
    ----------
    futures
        The futures to follow (with their dependencies).
    multi
        One bar per task prefix (True) or one bar in all.
    complete
        Count tasks already finished when the bar starts.
    interval
        Seconds between refreshes.
    console
        The rich ``Console`` to draw on (default: standard output).
    line_interval
        When the output is not a terminal: seconds between redraws of a bar
        whose counts did not change (a change redraws at the next interval).
    """

    def __init__(
        self,
        futures: list[Any],
        *,
        multi: bool = True,
        complete: bool = True,
        interval: float = 0.1,
        console: Any = None,
        line_interval: float = 2.0,
        group_of: Callable[[Any], Any] | None = None,
    ) -> None:
        self.multi = multi
        self.interval = interval
        self.line_interval = line_interval
        self._console = console
        clients = {id(f.client): f.client for f in futures}
        if len(clients) > 1:
            raise ValueError("progress follows futures of one client at a time")
        self.tracker = ProgressTracker(
            [f.key for f in futures], complete=complete, group_of=group_of
        )
        self._futures = futures
        self._client = next(iter(clients.values()), None)
        if self._client is not None:
            cluster = self._client.cluster
            if cluster is None:
                raise RuntimeError(
                    "progress() needs the cluster's process: show it from the "
                    "client that created the cluster, not from inside a task"
                )
            scheduler = cluster.scheduler
            self._runtime = cluster.runtime
            self._runtime.call(lambda: self.tracker.attach(scheduler)).result()
        else:
            self._runtime = None
            self.tracker.finished.set()
        self._displayed = False
        self._thread: threading.Thread | None = None
        #: The notebook display the bar updates (None outside notebooks).
        self._handle: Any = None

    # -- state ------------------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        return self.tracker.snapshot()

    def view(self) -> ProgressView:
        return ProgressView(self.snapshot(), multi=self.multi)

    def _wait_step(self, timeout: float) -> bool:
        """Wait up to ``timeout``; True once finished or the cluster is gone.

        The futures being done also ends the bar: it never outlives what it
        shows, even if a dependency's count were left behind.
        """
        if self.tracker.finished.wait(timeout):
            return True
        if self._runtime is None or not self._runtime.is_running:
            return True
        return all(f.done() for f in self._futures) and not self.tracker.finished.wait(
            timeout
        )

    def stop(self) -> None:
        """Unregister the tracker; the scheduler stops calling it."""
        runtime = self._runtime
        if runtime is None or not runtime.is_running:
            return
        scheduler = self._client.cluster.scheduler  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            runtime.call(lambda: self.tracker.detach(scheduler)).result(timeout=5.0)

    # -- blocking: terminal and logs ---------------------------------------------------

    def run(self) -> None:
        """Draw until every task finished (blocking), then the final line."""
        from rich.console import Console

        console = self._console or Console()
        try:
            if console.is_terminal:
                self._run_live(console)
            else:
                self._run_text(console)
        finally:
            self.stop()

    def _run_live(self, console: Any) -> None:
        from rich.live import Live

        with Live(
            self.view(),
            console=console,
            auto_refresh=False,
            transient=True,
        ) as live:
            while not self._wait_step(self.interval):
                live.update(self.view(), refresh=True)
        view = self.view()
        console.print(view)

    def _run_text(self, console: Any) -> None:
        """dask's ``TextProgressBar``: the text bar redrawn after ``\\r``.

        Output that is not a terminal gets the bytes dask writes there, so a
        script's captured output (and dask's own tests of it) read the same.
        Unlike dask, an unchanged bar is redrawn only every ``line_interval``
        seconds (a long run's log stays small), and the final bar is kept and
        ended with ``\\r\\n`` where dask erases it: the last ``\\r``-separated
        segment before the newline is the final state, as dask's tests read it.
        """
        stream = console.file  # sys.stdout as it is now (pytest's capsys swaps it)
        drawn: tuple[float, int] | None = None
        drawn_at = 0.0
        while not self._wait_step(self.interval):
            snapshot = self.snapshot()
            shown = (snapshot.fraction, snapshot.erred)  # all but the time
            now = time.monotonic()
            if shown != drawn or now - drawn_at >= self.line_interval:
                drawn, drawn_at = shown, now
                _write(stream, "\r" + text_line(snapshot))
        snapshot = self.snapshot()
        final = "\r" + text_line(snapshot) + "\r\n"
        if snapshot.first_error is not None:
            key, error = snapshot.first_error
            final += f"first error: {key!r}: {error}\n"
        _write(stream, final)

    # -- non-blocking: Jupyter ---------------------------------------------------------

    def _repr_html_(self) -> str:
        return render_html(self.view())

    def __repr__(self) -> str:
        return text_line(self.snapshot())

    def _ipython_display_(self) -> None:
        """Show the bar once and update it in place from a thread."""
        if self._displayed:
            return
        from IPython.display import display

        self._displayed = True
        handle = self._handle = display(
            {"text/html": self._repr_html_(), "text/plain": repr(self)},
            raw=True,
            display_id=f"localsched-progress-{uuid.uuid4().hex}",
        )
        self._thread = threading.Thread(
            target=self._update_display,
            args=(handle,),
            name="localsched-progress",
            daemon=True,
        )
        _drawing.add(self)
        self._thread.start()

    def _update_display(self, handle: Any) -> None:
        try:
            while not self._wait_step(self.interval * 5):
                self._redraw(handle)
            self._redraw(handle)
        finally:
            self.stop()

    def _redraw(self, handle: Any) -> None:
        handle.update(
            {"text/html": self._repr_html_(), "text/plain": repr(self)}, raw=True
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the bar finished drawing (notebook mode); True if it did."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return self.tracker.finished.wait(timeout)


def _write(stream: Any, text: str) -> None:
    # As dask's bar: a closed stream (the interpreter shutting down, a closed
    # pipe) loses the drawing rather than failing the computation it watches.
    with contextlib.suppress(ValueError):
        stream.write(text)
        stream.flush()


#: Notebook bars still drawing from their threads.
_drawing: weakref.WeakSet[ProgressBar] = weakref.WeakSet()


def finish_drawing(client: Any, timeout: float = 2.0) -> None:
    """Let the client's finished notebook bars draw their final state.

    ``Client.close`` calls this: a bar updates its display from a thread, and
    an update sent while no cell runs is lost for notebook runners (nbclient,
    nbconvert, papermill), so a bar could be left at 85 % although every task
    finished.
    """
    for bar in list(_drawing):
        if bar._client is client and bar.tracker.finished.is_set():
            bar.wait(timeout)
            # Again from this thread: the kernel files a thread's update under
            # whichever cell runs when it is sent, and one sent between cells
            # reaches no cell; now a cell (the one closing) is running.
            bar._redraw(bar._handle)
            _drawing.discard(bar)
