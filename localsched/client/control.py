"""``ControlMixin``: the ``Client`` methods that inspect and steer the cluster.

``scheduler_info``, ``nthreads``, ``who_has``, ``has_what``, ``processing``,
``run_on_scheduler``, ``story``, ``get_task_stream``, ``retire_workers``,
``wait_for_workers``, ``set_metadata``/``get_metadata`` and ``run``, with
``distributed.Client``'s signatures and return shapes.

Each method sends one typed request (``localsched.transport.requests``) through the
client's link; the request handler answers it on the scheduler thread, so it
sees one consistent state and never races the core. The same methods work in
the user's process and inside a task. The mixin needs from its host only
``self._link`` and ``self.cluster``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import cloudpickle

from localsched.client.dual import dual
from localsched.client.future import Future
from localsched.client.graph import replace_futures
from localsched.transport import pickling
from localsched.transport import requests as rq
from localsched.units import parse_timedelta

Key = Hashable

#: dask's ``dask.utils.no_default`` (the same value, so either works here).
no_default = "__no_default__"

__all__ = ["ControlMixin", "get_task_stream", "no_default"]


def _is_future(obj: object) -> bool:
    return isinstance(obj, Future)


def _keys_of(futures: Any) -> list[Key]:
    """Keys of the futures in ``futures`` (nested lists, tuples, sets, dicts)."""
    found: dict[Key, Any] = {}
    replace_futures(futures, _is_future, found)
    if not found and futures is not None:
        # A plain key or list of keys, as dask's ``futures_of`` leaves them out.
        items = futures if isinstance(futures, list | tuple | set) else [futures]
        return [k for k in items if not _is_future(k)]
    return list(found)


def _worker_list(workers: Any) -> tuple[Any, ...] | None:
    """dask's normalisation: one address becomes a list of one."""
    if workers is None:
        return None
    if isinstance(workers, list | tuple | set | frozenset):
        return tuple(workers)
    return (workers,)


def _address_order(address: str) -> tuple[str, int]:
    """``local://pid/10`` after ``local://pid/9``."""
    head, _, tail = address.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (address, -1)


def _run_results(answers: dict[str, Any], on_error: str) -> dict[str, Any]:
    """``run``'s answers by worker address: values, or errors as ``on_error`` says."""
    results: dict[str, Any] = {}
    for address in sorted(answers, key=_address_order):
        ok, payload, traceback_text = answers[address]
        value = cloudpickle.loads(payload) if isinstance(payload, bytes) else payload
        if ok:
            results[address] = value
            continue
        if traceback_text and value.__cause__ is None:
            from localsched.client.future import RemoteTraceback

            value.__cause__ = RemoteTraceback(traceback_text)
        if on_error == "raise":
            raise value
        if on_error == "return":
            results[address] = value
    return results


class ControlMixin:
    """Cluster inspection and control methods of ``Client``."""

    _link: Any
    cluster: Any

    def _ask(self, request: rq.Request, timeout: float | None = None) -> Any:
        """Send ``request`` through the link; the answer (or raise its error)."""
        return self._link.request(request).result(timeout)

    @dual
    def restart(
        self, timeout: str | float | Any = no_default, wait_for_workers: bool = True
    ) -> None:
        """Restart all workers and forget all tasks (``distributed.Client.restart``).

        Every future of every client is cancelled (reason ``"scheduler-restart"``),
        scheduler plugins' ``restart`` hooks run, results are freed and every
        worker process is replaced by a new one. Returns once as many new workers
        run as there were (with ``wait_for_workers=False``, once the old ones are
        gone); raises ``TimeoutError`` after ``timeout`` seconds (default 120, as
        dask's four connect timeouts).
        """
        self._check_running()  # type: ignore[attr-defined]
        seconds = 120.0 if timeout is no_default else parse_timedelta(timeout, "s")
        deadline = time.monotonic() + seconds
        link = self._link
        old = set(link.request(rq.Restart()).result(seconds))

        def done() -> bool:
            left = max(0.0, deadline - time.monotonic())
            current = set(link.request(rq.WorkerStatus()).result(left))
            if current & old:
                return False
            return not wait_for_workers or len(current) >= len(old)

        pause = threading.Event()
        while not done():
            if time.monotonic() > deadline:
                what = "come back" if wait_for_workers else "shut down"
                raise TimeoutError(
                    f"Workers did not {what} within {seconds} s of the restart"
                )
            pause.wait(0.01)

    # -- information -----------------------------------------------------------------

    @dual
    def scheduler_info(self, n_workers: int = -1, **kwargs: Any) -> dict[str, Any]:
        """Basic information about the scheduler and its workers.

        Parameters
        ----------
        n_workers
            Workers to describe (``-1``: all).

        Returns
        -------
        dict
            ``type``, ``id``, ``address``, ``services``, ``started``,
            ``n_workers``, ``total_threads``, ``total_memory`` and ``workers``:
            address -> ``nthreads``, ``memory_limit``, ``name``, ``host``,
            ``resources``, ``metrics``, ``status``, ``type``, ...
        """
        return self._ask(rq.SchedulerInfo(n_workers=n_workers))

    @dual
    def nthreads(self, workers: Any = None, **kwargs: Any) -> dict[str, int]:
        """Threads of each worker (all, or those named), by address.

        >>> client.nthreads()  # doctest: +SKIP
        {'local://123/0': 1, 'local://123/1': 1}
        """
        return self._ask(rq.NThreads(workers=_worker_list(workers)))

    ncores = nthreads

    @dual
    def who_has(self, futures: Any = None, **kwargs: Any) -> dict[Key, list[str]]:
        """Workers holding each key's result (all keys, or those of ``futures``).

        A result in shared memory outlives the worker that wrote it; once that
        worker is gone its list is empty although the result is still there.
        """
        keys = None if futures is None else tuple(_keys_of(futures))
        return self._ask(rq.WhoHas(keys=keys))

    @dual
    def has_what(self, workers: Any = None, **kwargs: Any) -> dict[str, list[Key]]:
        """Keys whose results each worker holds, by address."""
        return self._ask(rq.HasWhat(workers=_worker_list(workers)))

    @dual
    def processing(self, workers: Any = None) -> dict[str, list[Key]]:
        """Keys each worker is running or has queued, by address."""
        return self._ask(rq.Processing(workers=_worker_list(workers)))

    @dual
    def story(self, *keys_or_stimuli: Any, on_error: str = "raise") -> list[Any]:
        """Every logged transition of these keys (or futures) or stimulus ids."""
        keys = tuple(k.key if _is_future(k) else k for k in keys_or_stimuli)
        return self._ask(rq.Story(keys=keys))

    # -- running things -------------------------------------------------------------

    @dual
    def run_on_scheduler(
        self, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``function(*args, **kwargs)`` on the scheduler thread; its result.

        A function with a ``dask_scheduler`` parameter receives the ``Scheduler``
        there. Its exception is raised here. A coroutine function is run to
        completion on a private event loop. From inside a task the function,
        its arguments and its result cross the worker's pipe (cloudpickled).

        >>> def n_tasks(dask_scheduler=None):
        ...     return len(dask_scheduler.tasks)
        >>> client.run_on_scheduler(n_tasks)  # doctest: +SKIP
        0
        """
        return self._ask(rq.RunOnScheduler(function=function, args=args, kwargs=kwargs))

    @dual
    def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        workers: list[str] | None = None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """Run ``function(*args, **kwargs)`` in every worker process, outside tasks.

        A function with a ``dask_worker`` parameter receives a small worker
        description there (``address``, ``name``, ``nthreads``, ``pid``). It runs
        on a thread of its own in each worker, beside the task threads.

        Parameters
        ----------
        workers
            Addresses or names of the workers to run on (default: all).
        wait
            Wait for the answers; False returns None at once.
        nanny
            Not supported: no nanny processes here (the cluster supervises its
            workers from this process).
        on_error
            ``"raise"`` the first worker's exception, ``"return"`` it in place of
            that worker's result, or ``"ignore"`` that worker. A worker that
            exits before answering fails with ``OSError``.

        Returns
        -------
        dict
            address -> result.

        >>> client.run(os.getpid)  # doctest: +SKIP
        {'local://4242/0': 4250, 'local://4242/1': 4251}
        """
        cell = self._link.request(
            self._run_request(function, args, kwargs, workers, nanny, on_error)
        )
        if not wait:
            return None
        answers = cell.result()
        if any(not isinstance(a[1], bytes) for a in answers.values()):
            # A worker left mid-call: its answer came before the scheduler had
            # removed it; one round trip lets that finish, so what the caller
            # sees next (nthreads, wait_for_workers) no longer lists it.
            self._ask(rq.Ping())
        return _run_results(answers, on_error)

    def _run_request(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workers: list[str] | None,
        nanny: bool,
        on_error: str,
    ) -> rq.RunOnWorkers:
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(
                f"on_error must be 'raise', 'return', or 'ignore'; got {on_error!r}"
            )
        if nanny:
            raise ValueError(
                "localsched has no nanny processes (LocalCluster supervises its "
                "workers from this process); run with nanny=False, or use "
                "run_on_scheduler for this process"
            )
        return rq.RunOnWorkers(
            function=pickling.dumps(function, protocol=5),
            args=pickling.dumps((args, kwargs), protocol=5),
            workers=_worker_list(workers),
        )

    # -- diagnostics ----------------------------------------------------------------

    @dual
    def get_task_stream(
        self,
        start: float | str | None = None,
        stop: float | str | None = None,
        count: int | None = None,
        plot: bool | str = False,
        filename: str = "task-stream.html",
        bokeh_resources: Any = None,
    ) -> Any:
        """Tasks that finished or erred, oldest first (dask's task stream).

        Recording starts with the first call (or a ``get_task_stream`` context):
        call it once before the work you want to see.

        Parameters
        ----------
        start, stop
            ``time()`` values, or delays before now such as ``"60s"``: records
            whose last stop falls in between.
        count
            At most this many records (the latest, without ``start``/``stop``).
        plot
            True: also return a bokeh figure of the records (the task stream
            of ``performance_report``); ``"save"``: also write it to
            ``filename``. Needs bokeh (``pip install 'localsched[dashboard]'``).
        filename
            Where ``plot="save"`` writes the figure (self-contained HTML).
        bokeh_resources
            ``bokeh.resources`` to write with (default: inline, opens offline).

        Returns
        -------
        list of dict
            ``key``, ``worker``, ``status`` (``"OK"`` or ``"error"``),
            ``startstops`` (``[{"action": "compute", "start": ..., "stop": ...}]``),
            and ``nbytes``/``type`` for results. With ``plot``: the tuple
            ``(records, figure)``.

        Examples
        --------
        >>> client.get_task_stream(plot="save", filename="ts.html")  # doctest: +SKIP
        """
        if plot:
            from localsched.diagnostics import figures  # raises without bokeh
        records = self._ask(rq.TaskStream(start=start, stop=stop, count=count))
        if not plot:
            return records
        figure = figures.task_stream_figure(records)
        if plot == "save":
            figures.save_figure(figure, filename, resources=bokeh_resources)
        return records, figure

    def _task_stream_index(self) -> int:
        return self._ask(rq.TaskStreamIndex())

    def _task_stream_since(self, index: int) -> list[dict[str, Any]]:
        return self._ask(rq.TaskStream(start_index=index))

    # -- workers ----------------------------------------------------------------------

    @dual
    def retire_workers(
        self,
        workers: list[str] | None = None,
        close_workers: bool = True,
        **kwargs: Any,
    ) -> dict[str, dict[str, Any]]:
        """Retire workers gracefully; wait until they are gone.

        Their running tasks finish first; results they produced stay available
        (they live in the scheduler's process). Without ``workers``, the
        scheduler picks (``workers_to_close(**kwargs)``).

        Returns
        -------
        dict
            address -> the worker's ``scheduler_info`` entry, for each retired one.
        """
        retired = self._ask(
            rq.RetireWorkers(
                workers=_worker_list(workers),
                close_workers=close_workers,
                options=kwargs,
            )
        )
        pause, timer = 0.001, threading.Event()
        while True:
            status = self._ask(rq.WorkerStatus())
            if not any(status.get(a) == "closing_gracefully" for a in retired):
                return retired
            timer.wait(pause)  # their tasks finish: no event tells us when
            pause = min(pause * 2, 0.05)

    @dual
    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Block until ``n_workers`` workers are running.

        Raises
        ------
        TimeoutError
            Fewer workers after ``timeout`` seconds.
        """
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(
                f"`n_workers` must be a positive integer. Instead got {n_workers}."
            )
        self._ask(rq.Ping())  # see the effects of earlier calls
        if self.cluster is not None:
            # It also says why workers that cannot start do not (restart policy).
            self.cluster.wait_for_workers(n_workers, timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, timer = 0.001, threading.Event()
        while (count := len(self._ask(rq.WorkerStatus()))) < n_workers:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"Only {count} of {n_workers} workers started within {timeout} s"
                )
            timer.wait(pause)  # workers start: no event tells a client
            pause = min(pause * 2, 0.05)

    # -- metadata ----------------------------------------------------------------------

    @dual
    def set_metadata(self, key: Any, value: Any) -> None:
        """Store a small value in the scheduler under ``key``.

        A list key indexes into nested dicts, created on demand:
        ``set_metadata(["a", "b"], 1)`` sets ``task_metadata["a"]["b"] = 1``.
        """
        keys = tuple(key) if isinstance(key, list | tuple) else (key,)
        self._ask(rq.SetMetadata(keys=keys, value=value))

    @dual
    def get_metadata(self, keys: Any, default: Any = no_default) -> Any:
        """The value stored by ``set_metadata`` (a list indexes nested dicts).

        Raises
        ------
        KeyError
            Nothing is stored there and no ``default`` was given.
        """
        path = tuple(keys) if isinstance(keys, list | tuple) else (keys,)
        missing = ... if default is no_default else default
        return self._ask(rq.GetMetadata(keys=path, default=missing))


class get_task_stream:
    """Collect the task stream of a block (dask's ``get_task_stream``).

    Parameters
    ----------
    client
        Default: the task's client inside a task, else the default client.
    plot
        True: also make ``figure``, a bokeh figure of the block's tasks (one
        row per worker thread, loads from shared memory marked: the task
        stream of ``performance_report``); ``"save"``: also write it to
        ``filename``. Needs bokeh (``pip install 'localsched[dashboard]'``).
    filename
        Where ``plot="save"`` writes the figure.

    Examples
    --------
    >>> with get_task_stream(client, plot="save") as ts:  # doctest: +SKIP
    ...     x.compute()
    >>> ts.data  # doctest: +SKIP
    [{'key': ..., 'worker': ..., 'startstops': [...], 'status': 'OK'}, ...]
    >>> ts.figure  # doctest: +SKIP
    """

    def __init__(
        self,
        client: Any = None,
        plot: bool | str = False,
        filename: str = "task-stream.html",
    ) -> None:
        if plot:
            from localsched.diagnostics import figures  # noqa: F401 raises without bokeh
        if client is None:
            from localsched.client.task_client import get_client

            client = get_client()
        self.client = client
        self.data: list[dict[str, Any]] = []
        #: The bokeh figure, after the block, with ``plot``.
        self.figure: Any = None
        self._plot = plot
        self._filename = filename
        self._index = 0
        self._session: int | None = None

    def __enter__(self) -> get_task_stream:
        self._index = self.client._task_stream_index()
        if self._plot:
            # The recording knows each task's thread and its input loads.
            self._session = self.client._ask(rq.StartRecording())
        return self

    def __exit__(self, *exc: object) -> None:
        self.data.extend(self.client._task_stream_since(self._index))
        session, self._session = self._session, None
        if session is None:
            return
        from localsched.client.report import records_of
        from localsched.diagnostics import figures

        records = records_of(self.client._ask(rq.StopRecording(session=session)))
        self.figure = figures.task_stream_figure(
            records["tasks"], origin=records["start"], spills=records["spills"]
        )
        if self._plot == "save":
            figures.save_figure(self.figure, self._filename)
