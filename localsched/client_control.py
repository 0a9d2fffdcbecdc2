"""``ControlMixin``: the ``Client`` methods that inspect and steer the cluster.

``scheduler_info``, ``nthreads``, ``who_has``, ``has_what``, ``processing``,
``run_on_scheduler``, ``story``, ``get_task_stream``, ``retire_workers``,
``wait_for_workers``, ``set_metadata``/``get_metadata`` and ``run``, with
``distributed.Client``'s signatures and return shapes.

Every read runs on the scheduler thread (``runtime.call``), so it sees one
consistent state and never races the core. The mixin needs from its host only
``self._runtime``, ``self.cluster``, ``self.scheduler`` and ``self.id``.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from localsched.future import Future
from localsched.graph import replace_futures
from localsched.plugins import SchedulerPlugin
from localsched.units import parse_timedelta

Key = Hashable

#: dask's ``dask.utils.no_default`` (the same value, so either works here).
no_default = "__no_default__"

#: Records the task stream keeps (dask's ``task-stream-length`` default).
TASK_STREAM_LENGTH = 100_000
TASK_STREAM_PLUGIN = "task-stream"

__all__ = ["ControlMixin", "TaskStreamPlugin", "get_task_stream", "no_default"]


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


def _worker_list(workers: Any) -> list[Any] | None:
    """dask's normalisation: one address becomes a list of one."""
    if workers is None:
        return None
    if isinstance(workers, list | tuple | set | frozenset):
        return list(workers)
    return [workers]


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


def _task_stream_plugin(scheduler: Any) -> TaskStreamPlugin:
    """The scheduler's task stream plugin, registered on first use."""
    plugin = scheduler.plugins.get(TASK_STREAM_PLUGIN)
    if not isinstance(plugin, TaskStreamPlugin):
        plugin = TaskStreamPlugin(scheduler)
        scheduler.add_plugin(plugin, name=TASK_STREAM_PLUGIN)
    return plugin


def _worker_identity(ws: Any) -> dict[str, Any]:
    """dask's ``WorkerState.identity()`` keys."""
    return {
        **ws.identity(),
        "name": ws.name,
        "last_seen": ws.last_seen,
        "services": {},
        "nanny": None,
    }


def _address_order(address: str) -> tuple[str, int]:
    """``local://pid/10`` after ``local://pid/9``."""
    head, _, tail = address.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (address, -1)


class ControlMixin:
    """Cluster inspection and control methods of ``Client``."""

    _runtime: Any
    cluster: Any
    scheduler: Any
    id: str

    def _on_scheduler(self, function: Callable[[], Any]) -> Any:
        """Run ``function()`` on the scheduler thread; its result or exception."""
        return self._runtime.call(function).result()

    # -- information -----------------------------------------------------------------

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

        def identity() -> dict[str, Any]:
            scheduler = self.scheduler
            workers = list(scheduler.workers.values())
            if n_workers != -1:
                workers = workers[: max(n_workers, 0)]
            info = scheduler.identity()
            info["n_workers"] = len(scheduler.workers)
            info["total_threads"] = scheduler.total_nthreads
            info["total_memory"] = sum(
                ws.memory_limit or 0 for ws in scheduler.workers.values()
            )
            info["workers"] = {ws.address: _worker_identity(ws) for ws in workers}
            return info

        return self._on_scheduler(identity)

    def nthreads(self, workers: Any = None, **kwargs: Any) -> dict[str, int]:
        """Threads of each worker (all, or those named), by address.

        >>> client.nthreads()  # doctest: +SKIP
        {'local://123/0': 1, 'local://123/1': 1}
        """
        names = _worker_list(workers)

        def count() -> dict[str, int]:
            scheduler = self.scheduler
            if names is None:
                return {a: ws.nthreads for a, ws in scheduler.workers.items()}
            addresses = map(scheduler.coerce_address, names)
            return {
                a: scheduler.workers[a].nthreads
                for a in addresses
                if a in scheduler.workers
            }

        return self._on_scheduler(count)

    ncores = nthreads

    def who_has(self, futures: Any = None, **kwargs: Any) -> dict[Key, list[str]]:
        """Workers holding each key's result (all keys, or those of ``futures``).

        A result in shared memory outlives the worker that wrote it; once that
        worker is gone its list is empty although the result is still there.
        """
        keys = None if futures is None else _keys_of(futures)

        def collect() -> dict[Key, list[str]]:
            tasks = self.scheduler.tasks
            if keys is None:
                return {
                    key: [ws.address for ws in ts.who_has]
                    for key, ts in tasks.items()
                    if ts.state == "memory"
                }
            return {
                key: [ws.address for ws in tasks[key].who_has] if key in tasks else []
                for key in keys
            }

        return self._on_scheduler(collect)

    def has_what(self, workers: Any = None, **kwargs: Any) -> dict[str, list[Key]]:
        """Keys whose results each worker holds, by address."""
        return self._per_worker(workers, lambda ws: [ts.key for ts in ws.has_what])

    def processing(self, workers: Any = None) -> dict[str, list[Key]]:
        """Keys each worker is running or has queued, by address."""
        return self._per_worker(workers, lambda ws: [ts.key for ts in ws.processing])

    def _per_worker(
        self, workers: Any, keys_of: Callable[[Any], list[Key]]
    ) -> dict[str, list[Key]]:
        names = _worker_list(workers)

        def collect() -> dict[str, list[Key]]:
            scheduler = self.scheduler
            if names is None:
                return {a: keys_of(ws) for a, ws in scheduler.workers.items()}
            out = {}
            for name in names:
                address = scheduler.coerce_address(name)
                ws = scheduler.workers.get(address)
                out[address] = [] if ws is None else keys_of(ws)
            return out

        return self._on_scheduler(collect)

    def story(self, *keys_or_stimuli: Any, on_error: str = "raise") -> list[Any]:
        """Every logged transition of these keys (or futures) or stimulus ids."""
        keys = [k.key if _is_future(k) else k for k in keys_or_stimuli]
        return self._on_scheduler(lambda: self.scheduler.story(*keys))

    # -- running things -------------------------------------------------------------

    def run_on_scheduler(
        self, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``function(*args, **kwargs)`` on the scheduler thread; its result.

        A function with a ``dask_scheduler`` parameter receives the ``Scheduler``
        there. Its exception is raised here. A coroutine function is run to
        completion on a private event loop.

        >>> def n_tasks(dask_scheduler=None):
        ...     return len(dask_scheduler.tasks)
        >>> client.run_on_scheduler(n_tasks)  # doctest: +SKIP
        0
        """

        def call() -> Any:
            result = self.scheduler.run_function(function, args, kwargs)
            if inspect.isawaitable(result):
                import asyncio

                async def finish() -> Any:
                    return await result

                result = asyncio.run(finish())
            return result

        return self._on_scheduler(call)

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
        import cloudpickle

        from localsched.transport import pickling

        function_bytes = pickling.dumps(function, protocol=5)
        args_bytes = pickling.dumps((args, kwargs), protocol=5)
        names = _worker_list(workers)

        def start() -> Any:
            scheduler = self.scheduler
            addresses = (
                list(scheduler.workers)
                if names is None
                else scheduler.workers_list(names)
            )
            return self._runtime.start_run(function_bytes, args_bytes, addresses)

        cell = self._on_scheduler(start)
        if not wait:
            return None
        answers = cell.result()
        if any(not isinstance(a[1], bytes) for a in answers.values()):
            # A worker left mid-call: its answer came before the scheduler had
            # removed it; one round trip lets that finish, so what the caller
            # sees next (nthreads, wait_for_workers) no longer lists it.
            self._on_scheduler(lambda: None)
        results: dict[str, Any] = {}
        for address in sorted(answers, key=_address_order):
            ok, payload, traceback_text = answers[address]
            value = (
                cloudpickle.loads(payload) if isinstance(payload, bytes) else payload
            )
            if ok:
                results[address] = value
                continue
            if traceback_text and value.__cause__ is None:
                from localsched.future import RemoteTraceback

                value.__cause__ = RemoteTraceback(traceback_text)
            if on_error == "raise":
                raise value
            if on_error == "return":
                results[address] = value
        return results

    # -- diagnostics ----------------------------------------------------------------

    def get_task_stream(
        self,
        start: float | str | None = None,
        stop: float | str | None = None,
        count: int | None = None,
        plot: bool | str = False,
        filename: str = "task-stream.html",
        bokeh_resources: Any = None,
    ) -> list[dict[str, Any]]:
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
            Not supported (no Bokeh figure); must be False.

        Returns
        -------
        list of dict
            ``key``, ``worker``, ``status`` (``"OK"`` or ``"error"``),
            ``startstops`` (``[{"action": "compute", "start": ..., "stop": ...}]``),
            and ``nbytes``/``type`` for results.
        """
        if plot:
            raise ValueError(
                "localsched cannot plot the task stream; call get_task_stream() "
                "without plot= and plot its records (key, worker, startstops)"
            )
        return self._on_scheduler(
            lambda: _task_stream_plugin(self.scheduler).collect(
                start=start, stop=stop, count=count
            )
        )

    def _task_stream_index(self) -> int:
        return self._on_scheduler(lambda: _task_stream_plugin(self.scheduler).index)

    def _task_stream_since(self, index: int) -> list[dict[str, Any]]:
        return self._on_scheduler(
            lambda: _task_stream_plugin(self.scheduler).collect(start_index=index)
        )

    # -- workers ----------------------------------------------------------------------

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
        names = _worker_list(workers)

        def retire() -> dict[str, dict[str, Any]]:
            scheduler = self.scheduler
            infos = {a: _worker_identity(ws) for a, ws in scheduler.workers.items()}
            addresses = scheduler.retire_workers(
                workers=names, close_workers=close_workers, **kwargs
            )
            return {a: infos[a] for a in addresses if a in infos}

        retired = self._on_scheduler(retire)

        def pending() -> list[str]:
            workers_now = self.scheduler.workers
            return [
                a
                for a in retired
                if a in workers_now and workers_now[a].status == "closing_gracefully"
            ]

        pause, timer = 0.001, threading.Event()
        while self._on_scheduler(pending):
            timer.wait(pause)  # their tasks finish: no event tells us when
            pause = min(pause * 2, 0.05)
        return retired

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
        self._on_scheduler(lambda: None)  # see the effects of earlier calls
        self.cluster.wait_for_workers(n_workers, timeout)

    # -- metadata ----------------------------------------------------------------------

    def set_metadata(self, key: Any, value: Any) -> None:
        """Store a small value in the scheduler under ``key``.

        A list key indexes into nested dicts, created on demand:
        ``set_metadata(["a", "b"], 1)`` sets ``task_metadata["a"]["b"] = 1``.
        """
        keys = list(key) if isinstance(key, list | tuple) else [key]
        self._on_scheduler(lambda: self.scheduler.set_metadata(keys=keys, value=value))

    def get_metadata(self, keys: Any, default: Any = no_default) -> Any:
        """The value stored by ``set_metadata`` (a list indexes nested dicts).

        Raises
        ------
        KeyError
            Nothing is stored there and no ``default`` was given.
        """
        path = list(keys) if isinstance(keys, list | tuple) else [keys]
        missing = ... if default is no_default else default
        return self._on_scheduler(
            lambda: self.scheduler.get_metadata(keys=path, default=missing)
        )

    # -- not applicable on one machine -----------------------------------------------

    def upload_file(self, filename: str, load: bool = True) -> None:
        """Not needed here: workers share this machine's filesystem.

        Raises
        ------
        ValueError
            Always, saying what to do instead.
        """
        raise ValueError(
            f"localsched does not upload files ({filename!r}): its workers run on "
            "this machine and import from the same filesystem. Make the module "
            "importable instead (install it, or put its directory on PYTHONPATH "
            "or sys.path before the cluster starts its workers)."
        )


class get_task_stream:
    """Collect the task stream of a block (dask's ``get_task_stream``).

    >>> with get_task_stream(client) as ts:  # doctest: +SKIP
    ...     x.compute()
    >>> ts.data  # doctest: +SKIP
    [{'key': ..., 'worker': ..., 'startstops': [...], 'status': 'OK'}, ...]
    """

    def __init__(
        self,
        client: Any = None,
        plot: bool | str = False,
        filename: str = "task-stream.html",
    ) -> None:
        if plot:
            raise ValueError("localsched cannot plot the task stream")
        if client is None:
            from localsched.client import default_client

            client = default_client()
        self.client = client
        self.data: list[dict[str, Any]] = []
        self._index = 0

    def __enter__(self) -> get_task_stream:
        self._index = self.client._task_stream_index()
        return self

    def __exit__(self, *exc: object) -> None:
        self.data.extend(self.client._task_stream_since(self._index))
