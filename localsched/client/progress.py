"""``progress``: dask's progress bar for futures and persisted collections.

The entry point lives with the client because it understands what a client
hands out (futures, containers of them, persisted dask collections); the bar
itself, :class:`~localsched.diagnostics.progressbar.ProgressBar`, is a view
that only needs the futures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from localsched.client.future import futures_of
from localsched.diagnostics.progressbar import ProgressBar, in_notebook
from localsched.units import parse_timedelta

__all__ = ["progress"]


def progress(
    *futures: Any,
    notebook: bool | None = None,
    multi: bool = True,
    complete: bool = True,
    group_by: str | Callable[[Any], Any] = "prefix",
    **kwargs: Any,
) -> ProgressBar | None:
    """Track the progress of futures (``distributed.progress``).

    In a notebook the bar shows at once and updates in place while the cell
    returns (non-blocking); in a script it blocks until every task finished.
    It draws live in a terminal; when the output is not a terminal (a pipe, a
    log, pytest's ``capsys``) it writes dask's text bar to standard output,
    redrawn after ``\\r``, and ends with the final bar and a newline.

    Parameters
    ----------
    *futures
        Futures, collections of futures, or persisted dask collections.
    notebook
        Draw for Jupyter (default: when running in a kernel).
    multi
        One bar per task prefix (``inc``, ``sum``, ...) or a single bar.
    complete
        Count tasks that finished before the call (True) or only those left.
    group_by
        One bar per task prefix (``"prefix"``, dask's default), or per value
        of a function of the key (a callable, as dask's). ``"spans"`` groups
        by dask's spans: localsched keeps none, so every task is in dask's
        ``"default"`` span, one bar.
    **kwargs
        ``interval`` (seconds between refreshes, or a duration string such as
        ``"20ms"``), ``console`` (a rich Console; its file receives the text
        bar), ``line_interval`` (seconds between redraws of an unchanged text
        bar); dask's ``loop`` is accepted and not needed.

    Returns
    -------
    The ``ProgressBar`` in a notebook (dask returns its widget), else None.

    Examples
    --------
    >>> futures = client.map(slowinc, range(100))  # doctest: +SKIP
    >>> progress(futures)  # doctest: +SKIP
    [########################################] | 100% Completed |  1.2s
    """
    kwargs.pop("loop", None)  # dask's event loop argument: the bar has a thread
    if group_by == "spans":
        group_of: Callable[[Any], Any] | None = _default_span
    elif group_by == "prefix":
        group_of = None
    elif callable(group_by):
        group_of = group_by
    else:
        raise ValueError("`group_by` should be 'spans', 'prefix', or a Callable")
    bar = ProgressBar(
        _collect_futures(futures),
        multi=multi,
        complete=complete,
        interval=parse_timedelta(kwargs.pop("interval", 0.1)),
        console=kwargs.pop("console", None),
        line_interval=kwargs.pop("line_interval", 2.0),
        group_of=group_of,
    )
    if kwargs:
        bar.stop()
        raise TypeError(f"progress got unexpected arguments {sorted(kwargs)}")
    if notebook is None:
        notebook = in_notebook()
    if notebook:
        from IPython.display import display

        display(bar)
        return bar
    bar.run()
    return None


def _default_span(key: Any) -> str:
    """dask's span of a task outside every ``span()`` block: all of them here."""
    return "default"


def _collect_futures(objects: Iterable[Any]) -> list[Any]:
    """Futures in the arguments: futures, containers of them, persisted dask
    collections (whose graphs hold futures)."""
    found: list[Any] = []
    for obj in objects:
        graph = getattr(obj, "__dask_graph__", None)
        if callable(graph):
            found.extend(futures_of(list(dict(graph()).values())))
        else:
            found.extend(futures_of(obj))
    return found
