"""``LocalCluster``: the scheduler thread, its worker processes and the data store.

Workers are fresh interpreters that import only the worker's modules (see
``processes.py``): the user's ``__main__`` is never re-imported in a child, so a
script without an ``if __name__ == "__main__":`` guard works instead of
recursing. The cluster also starts a janitor process that removes the cluster's
shared-memory segments if the user process dies without closing it (even by
SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import math
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from localsched.deploy.asynchronous import (
    Awaitable,
    close_soon,
    wait_for_workers_async,
)
from localsched.deploy.cluster_api import DaskClusterSurface, WorkersView
from localsched.deploy.options import check_keywords, scheduler_options
from localsched.deploy.preloading import start_scheduler, teardown_preloads
from localsched.deploy.processes import (
    ThreadProcess,
    start_janitor,
    start_worker,
    stop_janitor,
)
from localsched.deploy.template import (
    Template,
    resolve_start_method,
    start_template,
    take_template_ahead,
)
from localsched.deploy.warming import TEMPLATE_QUIET, WarmImports, WarmOption
from localsched.future_state import FutureState
from localsched.runtime.memory import (
    MemoryMonitor,
    MemoryThresholds,
    parse_memory_limit,
)
from localsched.runtime.scheduler_thread import SchedulerRuntime, WorkerHandle
from localsched.runtime.supervision import RestartPolicy, StderrRelay
from localsched.scheduler.scheduler import Scheduler
from localsched.transport.executing import ExecutingPage
from localsched.transport.shm import BlobStore, sweep_stale_segments
from localsched.transport.shm_pool import POOL_IDLE_SECONDS
from localsched.units import format_bytes, parse_timedelta

if TYPE_CHECKING:
    from localsched.deploy.adaptive import Adaptive
    from localsched.diagnostics.web_dashboard import DashboardServer

logger = logging.getLogger("localsched.deploy.local")

_cluster_ids = itertools.count()

#: Clusters not closed yet, for the exit handler below.
_open_clusters: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


def cluster_at(address: str) -> LocalCluster:
    """The open ``LocalCluster`` of this process whose scheduler is at ``address``.

    Raises
    ------
    ValueError
        None is (``local://`` addresses name clusters of this process only).
    """
    for cluster in list(_open_clusters):
        if cluster.scheduler.address == address and cluster.status == "running":
            return cluster
    raise ValueError(
        f"No running LocalCluster at {address!r} in this process: a local:// "
        "address names a cluster started by this process"
    )


@atexit.register
def _close_open_clusters() -> None:
    """Close what the program left open while the scheduler thread still runs.

    Later, during interpreter finalization, daemon threads are gone, and a
    ``__del__`` that asks the scheduler thread to shut down waits for nothing
    until its timeouts expire: an unclosed ``Client()`` made exit hang. dask
    closes its clusters at exit the same way.

    ``atexit`` runs the last registered hook first, and the imports above
    registered the store's exit cleanup (``transport/finalizers.py``) before
    this one: workers stop before anything removes their segments.
    """
    for cluster in list(_open_clusters):
        with contextlib.suppress(Exception):
            cluster._close(timeout=5.0)


#: Extra queued tasks per thread for tasks shorter than a round trip (the core's
#: ``fast_task_slots``): keeps workers busy on bursts of tiny tasks. The core
#: gives ``ceil(dispatch_latency / duration)`` of them, so about 1 ms of work
#: per thread whatever the cap; the cap only binds for tasks under 8 us, such
#: as no-ops. 128 rather than 16: a map of 100,000 no-ops took 40 instead of
#: 49 us of scheduler-thread CPU per task and 9 instead of 15 us per worker
#: (fewer, larger batches each way: one pipe write wakes a worker per batch).
FAST_TASK_SLOTS = 128

#: What moving a task to another worker costs beyond reading its inputs: a
#: scheduler round trip here, not dask's 0.1 s network latency.
STEAL_LATENCY = 1e-3

#: Worker statuses that count as staying (not retiring, not gone).
_ACTIVE = ("running", "paused")

#: Seconds ``LocalCluster`` waits for its first workers before giving up.
START_TIMEOUT = 60.0


def nprocesses_nthreads(n: int) -> tuple[int, int]:
    """dask's default split of ``n`` cores into processes and threads.

    Up to 4 cores: one single-threaded process per core; beyond, the smallest
    factor of ``n`` at least ``sqrt(n)`` processes.

    >>> nprocesses_nthreads(4)
    (4, 1)
    >>> nprocesses_nthreads(32)
    (8, 4)
    """
    if n <= 4:
        return n, 1
    processes = min(f for f in range(1, n + 1) if n % f == 0 and f >= math.sqrt(n))
    return processes, n // processes


def available_cores() -> int:
    """Cores this process may use: affinity mask, capped by a cgroup CPU quota.

    What ``loky.cpu_count()`` computes, without importing loky's executor
    machinery (tens of milliseconds of start-up).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def _cgroup_cpu_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def _check_not_in_child() -> None:
    process = multiprocessing.current_process()
    if multiprocessing.parent_process() is not None and process.name != "MainProcess":
        raise RuntimeError(
            "A localsched cluster is being started while a child process imports "
            "your main module. Start it only when the script runs as a program:\n\n"
            '    if __name__ == "__main__":\n'
            "        client = Client()\n"
            "        ...\n"
        )


class LocalCluster(DaskClusterSurface):
    """A scheduler and worker processes on this machine (``distributed.LocalCluster``).

    Parameters
    ----------
    n_workers
        Number of worker processes (default: from the number of cores, as dask).
    threads_per_worker
        Task threads per worker.
    processes
        Workers are processes (True) or threads of this process (False).
    memory_limit
        Bytes per worker as in dask: ``"auto"`` (the machine's memory times
        threads per worker / cores), a fraction of the machine's memory, a byte
        count or a string such as ``"4GiB"``, or 0/None (no limit). The workers'
        limits add up to one budget for the machine (``localsched.runtime.memory``).
    resources
        Abstract resources each worker offers, e.g. ``{"GPU": 1}``.
    validate
        Check the scheduler's invariants after every change (tests).
    allowed_failures
        Worker deaths a task survives before ``KilledWorker`` (default: dask's
        ``distributed.scheduler.allowed-failures``, 3).
    worker_saturation
        Root tasks queued per worker thread ahead of time (default: dask's
        ``distributed.scheduler.worker-saturation``, 1.1; ``inf``: no queuing).
        dask's ``distributed.scheduler.work-stealing`` turns stealing off.
    dashboard_address
        Serve the live web dashboard there, e.g. ``":8787"`` (off by default:
        nothing listens unless asked). A host left out means 127.0.0.1; the
        link, with its access token, is ``dashboard_link`` (docs/dashboard.md).
        Needs bokeh (``pip install 'localsched[dashboard]'``).
    asynchronous
        As dask: nothing starts until ``await cluster`` (or ``async with``),
        which starts it without blocking the event loop; ``close``, ``scale``
        and ``wait_for_workers`` called from the loop return awaitables
        (``localsched.deploy.asynchronous``).
    warm_imports
        Modules each worker process imports in the background once it is
        ready, so the first task using them does not wait: ``"auto"`` (the
        default, from dask's config ``localsched.worker.warm-imports``): the
        heavy data modules this process has imported (numpy, pandas, pyarrow,
        dask.dataframe, ...; ``localsched.deploy.warming.WARM_CANDIDATES``);
        a list of module names (may include ``"auto"``); False: none. An
        import that fails is logged by the worker and skipped.
    worker_start_method
        ``"template"`` (the default where supported, from dask's config
        ``localsched.worker.start-method``): worker processes are forked from
        a pre-imported template process the cluster starts
        (``localsched.deploy.template``), in milliseconds; ``"spawn"``: each
        worker is a fresh interpreter.
    **kwargs
        dask's worker options ``memory_target_fraction`` (and ``_spill_``,
        ``_pause_``, ``_terminate_``), ``local_directory``, ``plugins``,
        ``preload``, ``scheduler_kwargs``; dask's other ``LocalCluster``,
        ``Worker`` and ``Nanny`` options are accepted and ignored
        (``silence_logs``, ...). Any other name raises
        ``TypeError``, as in dask.

    Examples
    --------
    >>> with LocalCluster(n_workers=2) as cluster:  # doctest: +SKIP
    ...     with Client(cluster) as client:
    ...         client.submit(sum, [1, 2]).result()
    3
    """

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        memory_limit: str | float | int | None = "auto",
        resources: dict[str, float] | None = None,
        *,
        validate: bool = False,
        allowed_failures: int | None = None,
        worker_saturation: float | str | None = None,
        name: str | None = None,
        dashboard_address: str | int | None = None,
        asynchronous: bool = False,
        warm_imports: WarmOption = None,
        worker_start_method: str | None = None,
        **kwargs: Any,
    ) -> None:
        _check_not_in_child()
        # Before anything starts, as dask's Worker rejects a typo (n_worker=2);
        # an asynchronous cluster raises it when awaited, as dask's does.
        refusal: TypeError | None = None
        try:
            check_keywords("LocalCluster", set(kwargs) - _KEYWORDS_TAKEN_BELOW)
        except TypeError as exc:
            if not asynchronous:
                raise
            refusal = exc
        #: Resolved now: a bad method raises before anything starts.
        self._start_method = (
            resolve_start_method(worker_start_method) if processes else "thread"
        )
        #: The process workers are forked from (None: they are spawned).
        self._template: Template | None = None
        if self._start_method == "template" and not asynchronous:
            # First thing: its boot, the longest step of the start, overlaps
            # the rest of the construction (``Client()`` started it earlier).
            self._template = take_template_ahead() or start_template(
                {"memory_limit": memory_limit, "warm_imports": warm_imports}
            )
        try:
            options = scheduler_options(
                allowed_failures=allowed_failures, worker_saturation=worker_saturation
            )
            if dashboard_address is not None and dashboard_address is not False:
                from localsched.diagnostics.web_dashboard import require_bokeh

                require_bokeh()  # before starting anything
            # Scheduler plugins and preloads: LocalCluster(plugins=, preload=) or
            # dask's scheduler_kwargs={"plugins": ..., "preload": ...}.
            scheduler_kwargs = dict(kwargs.pop("scheduler_kwargs", None) or {})
            plugins = [
                *(kwargs.pop("plugins", None) or ()),
                *(scheduler_kwargs.get("plugins") or ()),
            ]
            preload = kwargs.pop("preload", None) or scheduler_kwargs.get("preload")
            preload_argv = kwargs.pop("preload_argv", None) or scheduler_kwargs.get(
                "preload_argv", ()
            )
            self._preloads: list[Any] = []
            cores = available_cores()
            if n_workers is None and threads_per_worker is None:
                n_workers, threads_per_worker = nprocesses_nthreads(cores)
            elif n_workers is None:
                assert threads_per_worker is not None
                n_workers = max(1, cores // threads_per_worker)
            elif threads_per_worker is None:
                threads_per_worker = max(1, cores // max(n_workers, 1))
            self.threads_per_worker = threads_per_worker
            self.processes = processes
            self.resources = dict(resources or {})
            #: What new worker processes import once ready (deploy/warming.py).
            self.warm_imports = WarmImports(warm_imports)
            self.memory_limit = parse_memory_limit(
                memory_limit, threads_per_worker, cores
            )
            number = next(_cluster_ids)
            self.name = name or f"LocalCluster-{os.getpid()}-{number}"
            self.status = "starting"
            self._worker_ids = itertools.count()
            self._restarts = RestartPolicy()
            self._adaptive: Adaptive | None = None
            self._target = n_workers
            self._dashboard: DashboardServer | None = None
            self._janitor: tuple[Any, Connection] | None = None
            #: Live views drawing from threads (notebook panels): stopped at close.
            self.live_views: weakref.WeakSet[Any] = weakref.WeakSet()
            self.scheduler = Scheduler(
                validate=validate,
                **options,
                fast_task_slots=FAST_TASK_SLOTS,
                steal_latency=STEAL_LATENCY,
            )
            self.scheduler.cluster_ref = weakref.ref(self)
            if number:
                # Unique in the process, so ``Client(cluster.scheduler_address)``
                # finds this cluster (the first keeps ``local://<pid>``).
                self.scheduler.address = f"local://{os.getpid()}-{number}"
        except BaseException:
            if self._template is not None:
                self._template.close()
            raise
        self._asynchronous = asynchronous
        start = functools.partial(
            self._start,
            n_workers,
            plugins,
            (preload, preload_argv),
            dashboard_address,
            kwargs,
        )
        if asynchronous:
            # ``await cluster`` (or ``async with``) starts it off the event
            # loop (deploy/asynchronous.py), as dask's asynchronous clusters
            # start when awaited.
            self.status = "created"
            self._pending_start: Callable[[], None] | None = (
                start if refusal is None else functools.partial(_refuse, refusal)
            )
            return
        self._pending_start = None
        start()

    def _start(
        self,
        n_workers: int,
        plugins: list[Any],
        preloads: tuple[Any, Any],
        dashboard_address: str | int | None,
        kwargs: dict[str, Any],
    ) -> None:
        """Start the scheduler thread and the workers; wait for them to join."""
        if self._start_method == "template" and self._template is None:
            # Asynchronous: started now, when awaited.
            self._template = start_template(
                {
                    "memory_limit": self.memory_limit,
                    "warm_imports": self.warm_imports.names,
                }
            )
        sweep_stale_segments()
        self.store = BlobStore(
            spill_directory=kwargs.pop("local_directory", None),
            idle_seconds=POOL_IDLE_SECONDS,
        )
        self.runtime = SchedulerRuntime(
            self.scheduler, self.store, on_worker_exit=self._on_worker_exit
        )
        self.memory = _start_memory_monitor(self.runtime, self.memory_limit, kwargs)
        self.scheduler.started = time.time()
        self.runtime.start()
        try:
            self._preloads = self.runtime.call(
                lambda: start_scheduler(
                    self.scheduler, self.runtime, plugins, *preloads
                )
            ).result()
        except BaseException:
            self._close()
            raise
        self.status = "running"
        _open_clusters.add(self)
        try:
            self._start_workers(n_workers)
            # After the workers (their forks come first), before any task: no
            # segment exists before the constructor returns.
            if self.processes:
                self._janitor = start_janitor(self.store.directory, self._template)
            self._wait_for_workers(n_workers, timeout=START_TIMEOUT)
            if dashboard_address is not None and dashboard_address is not False:
                from localsched.diagnostics.web_dashboard import DashboardServer

                self._dashboard = DashboardServer(self, dashboard_address)
        except BaseException:
            self._close()
            raise
        logger.info("%s started with %d workers", self.name, n_workers)

    # -- clients ------------------------------------------------------------------

    @property
    def scheduler_address(self) -> str:
        """The scheduler's address, ``local://<pid>[-n]``: ``Client(address)``
        in this process attaches to this cluster."""
        return str(self.scheduler.address)

    def get_client(self) -> Any:
        """A client of this cluster: the current client if it is one, else a new
        one (as ``distributed``'s ``Cluster.get_client``)."""
        # The one import of the client by deployment, declared in the layer
        # contracts (pyproject.toml) and in tests/test_layers.py: dask's
        # Cluster.get_client makes a client the same way.
        from localsched.client.client import Client, default_client

        try:
            client = default_client()
        except ValueError:
            client = None
        if client is not None and client.cluster is self:
            return client
        return Client(self)

    # -- workers ------------------------------------------------------------------

    @property
    def workers(self) -> WorkersView:
        """Worker name -> address of the workers the scheduler knows (a live
        mapping, empty once the cluster closed, as dask's)."""
        return WorkersView(self)

    def _start_workers(self, n: int) -> None:
        # On the scheduler thread: Linux's PR_SET_PDEATHSIG fires when the thread
        # that started a child exits, and that thread lives as long as the cluster.
        done = self.runtime.call(lambda: self._register(n))
        done.result(timeout=START_TIMEOUT)

    def _register(self, n: int) -> None:
        for _ in range(n):
            handle = self._start_worker()
            self.runtime.workers[handle.address] = handle

    def _start_worker(self) -> WorkerHandle:
        # Workers cannot start here (RestartPolicy gave up): scale() and adapt()
        # get the reason instead of starting more processes that die.
        self._restarts.check()
        number = next(self._worker_ids)
        address = f"local://{os.getpid()}/{number}"
        name = f"localsched-worker-{number}"
        process: Any
        # A thread worker shares memory without a descriptor: its page's
        # objects live until garbage collection, which must not hold an fd.
        page, worker_page = (
            (ExecutingPage(), None) if self.processes else ExecutingPage.in_process()
        )
        if self._template is not None:
            # For the forks after this one (the modules this process has now).
            modules = self.warm_imports.template_modules()
            self._template.warm(modules, TEMPLATE_QUIET)
        try:
            if self.processes:
                process, conn = start_worker(
                    self.threads_per_worker,
                    self.store.writer(),
                    name,
                    self.resources,
                    executing_page=page,
                    warm_imports=self.warm_imports.modules(),
                    template=self._template,
                )
            else:
                from localsched.worker.main import Worker

                conn, child_conn = multiprocessing.Pipe(duplex=True)
                # Its own segment names: this process's pid is every thread
                # worker's (shm.BlobWriter).
                owner = f"t{number}"
                worker = Worker(
                    child_conn,
                    self.threads_per_worker,
                    self.store.writer(owner),
                    self.resources,
                    # Its own view: the runtime closes ``page`` when the
                    # worker leaves, maybe while a task thread still runs.
                    executing_page=worker_page,
                )
                process = ThreadProcess(worker, child_conn, name=name)
                process.start()
        except BaseException:
            page.close()
            raise
        handle = WorkerHandle(address, number, process, conn, self.threads_per_worker)
        if not self.processes:
            handle.writer_owner = f"t{number}"
        handle.resources = dict(self.resources)
        handle.memory_limit = self.memory_limit
        handle.executing_page = page
        if getattr(process, "stderr", None) is not None:
            handle.stderr_relay = StderrRelay(process.stderr)
        return handle

    def _on_worker_exit(self, handle: WorkerHandle, expected: bool) -> None:
        """Called on the scheduler thread: replace a worker that crashed or that
        the runtime restarted (force-cancel, ``Client.restart``), after the
        delay the restart policy asks for (``supervision.RestartPolicy``)."""
        if (expected and not handle.restarting) or self.status != "running":
            return
        delay = (
            0.0
            if expected
            else self._restarts.delay_after(handle, self.runtime.workers.values())
        )
        if delay is None:
            return
        if delay:
            self.runtime.call_later(delay, self._replace_worker)
        else:
            self._replace_worker()

    def _replace_worker(self) -> None:
        """Start a worker if there are fewer than the target (scheduler thread)."""
        if self.status != "running" or len(self.runtime.workers) >= self._target:
            return
        try:
            replacement = self._start_worker()
        except Exception:
            logger.exception("Could not start a replacement worker")
            return
        self.runtime.workers[replacement.address] = replacement
        self.runtime.post()  # from a timer: wake the loop to watch its pipes

    def scale(
        self, n: int = 0, memory: str | int | None = None, cores: int | None = None
    ) -> Any:
        """Grow or shrink to ``n`` workers (shrinking retires workers gracefully).

        ``memory=``/``cores=``: at least enough workers for that much memory or
        that many threads, as dask's. Stops adaptive scaling, if it runs
        (``adapt()`` starts it again). On an asynchronous cluster called from
        its event loop, returns an awaitable at once, as dask does; ``await
        cluster`` then waits for the workers.
        """
        n = self._n_from_resources(n, memory, cores)
        self._stop_adaptive("scale")
        # Now, not on the scheduler thread's next turn: an asynchronous
        # caller's ``worker_spec`` counts the workers asked for at once.
        self._target = n
        done = self.runtime.call(lambda: self._scale_now(n))
        if self.asynchronous:
            return Awaitable(done)
        done.result(timeout=START_TIMEOUT)
        return None

    def _scale_now(self, n: int) -> None:
        # Scheduler thread: atomic with respect to adaptive decisions.
        current = self._count_staying_workers()
        if n >= current:
            self._scale_up_to(n)
            return
        self._target = n
        from localsched.deploy.adaptive import close_active_workers

        workers = self.scheduler.workers
        joined = sum(ws.status in _ACTIVE for ws in workers.values())
        # Started but not joined yet: they count, and are not the scheduler's
        # to choose among (they join within a fraction of a second).
        arriving = current - joined
        addresses = close_active_workers(self.scheduler, max(0, n - arriving))
        if addresses:
            self.scheduler.retire_workers(workers=addresses, close_workers=True)

    def _scale_up_to(self, n: int) -> None:
        """Start the workers missing to have ``n`` (scheduler thread).

        Each start is a non-blocking ``fork``/``exec`` (about a millisecond):
        the new processes boot in parallel while this thread goes on.
        """
        self._target = n
        missing = n - self._count_staying_workers()
        if missing > 0 and self.status == "running":
            self._register(missing)
            # Called from a timer, this runs before the loop's poll: wake it, so
            # the next turn watches the new pipes and sees their hellos at once.
            self.runtime.post()

    def _retire_names(self, names: list[Any]) -> list[str]:
        """Retire workers by name gracefully and close them (scheduler thread)."""
        addresses = self.scheduler.retire_workers(names=names, close_workers=True)
        self._target = self._count_staying_workers()
        return addresses

    def _count_staying_workers(self) -> int:
        """Workers starting or running, not those retiring or on their way out.

        A retired worker's process lingers a moment after the scheduler let it
        go; counting it made ``scale(0)`` then ``scale(1)`` start nobody.
        """
        return len(self._staying_worker_names())

    def _staying_worker_names(self) -> list[Any]:
        """Names of the workers counted by ``_count_staying_workers``."""
        names = []
        for handle in self.runtime.workers.values():
            ws = self.scheduler.workers.get(handle.address)
            if handle.said_goodbye or (
                handle.is_ready
                and (ws is None or ws.status in ("closing_gracefully", "closed"))
            ):
                continue
            names.append(handle.name)
        return names

    # -- dashboard ------------------------------------------------------------------

    @property
    def dashboard_link(self) -> str | None:
        """Link to the live web dashboard, with its token; None when it is off."""
        dashboard = self._dashboard
        return None if dashboard is None else dashboard.link

    def _stop_live_views(self) -> None:
        """Stop the web dashboard (freeing its port) and the notebook panels."""
        for view in list(self.live_views):
            with contextlib.suppress(Exception):
                view.stop()
        dashboard, self._dashboard = self._dashboard, None
        if dashboard is not None:
            dashboard.close()

    # -- adaptive -------------------------------------------------------------------

    def adapt(
        self,
        Adaptive: type[Adaptive] | None = None,
        *,
        minimum: int | None = None,
        maximum: int | float | None = None,
        interval: str | float | timedelta | None = None,
        wait_count: int | None = None,
        target_duration: str | float | timedelta | None = None,
        **kwargs: Any,
    ) -> Adaptive:
        """Start and retire workers as the load changes; returns the ``Adaptive``.

        A second call replaces the first; :meth:`scale` stops adapting.

        Parameters
        ----------
        Adaptive
            The class to use (a subclass of :class:`localsched.deploy.Adaptive`).
        minimum, maximum
            Bounds on the number of workers; ``maximum=None``: the machine's
            cores divided by ``threads_per_worker``.
        interval
            Time between two decisions, e.g. ``"500ms"``.
        wait_count
            Consecutive suggestions before a worker is retired.
        target_duration
            Time the current work should take; shorter scales up more.
        **kwargs
            ``minimum_cores``/``maximum_cores``/``minimum_memory``/
            ``maximum_memory`` (bounds as dask computes them from the workers'
            threads and memory limit), ``worker_key=`` and
            ``Scheduler.workers_to_close`` arguments. Values left out come from
            dask's ``distributed.adaptive.*`` config, else dask's defaults
            (``localsched.deploy.adaptive.Adaptive``).

        Examples
        --------
        >>> cluster.adapt(minimum=1, maximum=4, interval="500ms")  # doctest: +SKIP
        <Adaptive: minimum=1, maximum=4, state=running, decisions=0>
        """
        from localsched.deploy.adaptive import Adaptive as DefaultAdaptive

        if self.status != "running":
            raise RuntimeError(f"Cannot adapt a cluster that is {self.status}")
        self._stop_adaptive("adapt() called again")
        adaptive_class = Adaptive or DefaultAdaptive
        bounds = self._adapt_bounds({"minimum": minimum, "maximum": maximum, **kwargs})
        self._adaptive = adaptive_class(
            self,
            interval=interval,
            wait_count=wait_count,
            target_duration=target_duration,
            **bounds,
        )
        return self._adaptive

    @property
    def adaptive(self) -> Adaptive | None:
        """The ``Adaptive`` of the last :meth:`adapt` call (None: never adapted)."""
        return self._adaptive

    def default_maximum_workers(self) -> int:
        """Workers that fill the machine's cores (``adapt(maximum=None)``)."""
        return max(1, available_cores() // max(1, self.threads_per_worker))

    def _stop_adaptive(self, reason: str) -> None:
        adaptive = self._adaptive
        if adaptive is not None:
            adaptive.stop(reason=reason)

    def wait_for_workers(
        self, n_workers: int, timeout: str | float | None = None
    ) -> Any:
        """Block until at least ``n_workers`` workers are running.

        On an asynchronous cluster called from its event loop, returns an
        awaitable instead (``await cluster.wait_for_workers(2)``).
        """
        timeout = parse_timedelta(timeout)  # seconds or a duration string
        if self.asynchronous:
            return wait_for_workers_async(self, n_workers, timeout)
        self._wait_for_workers(n_workers, timeout)
        return None

    def _wait_for_workers(self, n_workers: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while len(self.scheduler.workers) < n_workers:
            self._restarts.check()  # workers that cannot start: say why, now
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"Only {len(self.scheduler.workers)} of {n_workers} workers "
                    f"started within {timeout} s"
                )
            self.runtime.call(lambda: None).result(timeout=1.0)
            if len(self.scheduler.workers) < n_workers:
                # Short at first: workers forked from the template say hello
                # within milliseconds.
                threading.Event().wait(pause)
                pause = min(2 * pause, 0.005)

    # -- lifecycle ------------------------------------------------------------------

    def close(self, timeout: str | float = 10.0) -> Any:
        """Stop workers, the scheduler thread and free all shared memory; idempotent.

        Unless every worker is gone and the store removed its segments (a clean
        close), the janitor is told to sweep instead of goodbye. On an
        asynchronous cluster called from its event loop, the close starts in a
        thread of its own and an awaitable is returned (``await
        cluster.close()``): the loop goes on meanwhile.
        """
        timeout = parse_timedelta(timeout)  # seconds or a duration string
        if self.asynchronous:
            return Awaitable(close_soon(self, timeout))
        self._close(timeout)
        return None

    def _close(self, timeout: float = 10.0) -> None:
        if self.status in ("closing", "closed"):
            return
        if self.status == "created" or "runtime" not in vars(self):
            # Asynchronous, never awaited (or refused when awaited): nothing runs
            # but, if the start failed early, the template.
            self._pending_start = None
            if self._template is not None:
                self._template.close()
            self.status = "closed"
            return
        self.status = "closing"
        timeout = parse_timedelta(timeout)
        started = time.monotonic()
        if self._template is not None:
            self._template.is_closing = True
        is_clean = False
        try:
            self._stop_live_views()
            memory = getattr(self, "memory", None)
            if memory is not None:
                memory.stop()
            self._stop_adaptive("cluster closing")
            handles: list[WorkerHandle] = []
            if self._preloads and self.runtime.is_running:
                preloads, self._preloads = self._preloads, []
                with contextlib.suppress(Exception):
                    call = self.runtime.call(lambda: teardown_preloads(preloads))
                    call.result(timeout)
            if self.runtime.is_running:
                with contextlib.suppress(Exception):
                    handles = self.runtime.call(self._shutdown_workers).result(timeout)
            elif self.runtime.failure is not None:
                # The scheduler thread died (and told the workers to stop): nobody
                # owns its state now, so this thread stops and reaps them itself.
                self.runtime.stop(timeout)
                handles = self._shutdown_workers()
            for handle in handles:
                handle.process.join(max(0.0, timeout - (time.monotonic() - started)))
                if handle.process.is_alive():
                    handle.process.kill()
                    handle.process.join(1.0)
            self.runtime.stop(timeout)
            # Futures of clients still attached can neither finish nor be read
            # now: cancel them all, as a dask client does when it loses its
            # scheduler (but a failure's futures keep the error that says why).
            failed = self.runtime.failure is not None
            for client in list(self.runtime.clients.values()):
                for state in list(client.states.values()):
                    if failed and isinstance(state, FutureState) and state.done():
                        continue
                    state.cancel("scheduler-connection-lost")
            self.scheduler.close()
            are_workers_gone = self._release_workers(handles)
            self.store.close()
            is_clean = are_workers_gone and not failed
        finally:
            if self._janitor is not None:
                stop_janitor(*self._janitor, is_clean=is_clean)
            # Last: it reports the exit codes of what it forked.
            if self._template is not None:
                self._template.close()
        self.status = "closed"
        logger.info(
            "%s closed in %.0f ms", self.name, 1000 * (time.monotonic() - started)
        )

    def _release_workers(self, handles: list[WorkerHandle]) -> bool:
        """Give back what each worker holds in this process, once the scheduler
        thread stopped: its pipe, pidfd and executing page. The thread may stop
        before it handles the last exits (about one ``memfd`` leaked per cluster
        under load), and a worker it never told to stop exits at its pipe's EOF.

        Returns True if every worker is gone, so nothing can write a segment
        after the store's close.
        """
        told = {id(h) for h in handles}  # joined already, or killed
        workers = list(self.runtime.workers.values())
        everyone = {id(h): h for h in [*handles, *workers]}
        is_hung = self.runtime.is_running  # stop timed out
        for handle in everyone.values():
            if is_hung:  # it still reads the pipes: only stop the processes
                handle.process.kill()
            else:
                with contextlib.suppress(OSError):
                    handle.conn.close()
        deadline = time.monotonic() + 1.0
        are_gone = True
        for key, handle in everyone.items():
            process = handle.process
            wait = 0.0 if key in told else deadline - time.monotonic()
            process.join(max(0.0, wait))
            if process.is_alive():
                process.kill()
                process.join(1.0)
            are_gone = are_gone and not process.is_alive()
            if not is_hung:
                if handle.stderr_relay is not None:
                    handle.stderr_relay.close()
                if handle.executing_page is not None:
                    handle.executing_page.close()
        return are_gone and not is_hung

    def _shutdown_workers(self) -> list[WorkerHandle]:
        handles = list(self.runtime.workers.values())
        for handle in handles:
            handle.outbox.append(_shutdown_message())
        self.runtime._flush()
        return handles

    def __enter__(self) -> LocalCluster:
        if self.asynchronous:
            raise TypeError(
                "Used 'with' with asynchronous class; please use 'async with'"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.status == "running":
                self._close(timeout=2.0)

    def __repr__(self) -> str:
        workers = self.scheduler.workers
        threads = sum(ws.nthreads for ws in workers.values())
        adaptive = self._adaptive
        adapting = ""
        if adaptive is not None and adaptive.state == "running":
            adapting = f", adaptive={adaptive.minimum}..{adaptive.maximum}"
        link = self.dashboard_link
        dashboard = "" if link is None else f", dashboard={link}"
        # As dask's: the address, then the memory when the workers have a limit.
        memory = sum(ws.memory_limit or 0 for ws in workers.values())
        limit = f", memory={format_bytes(memory)}" if memory else ""
        return (
            f"LocalCluster({self.name!r}, {self.scheduler_address!r}, "
            f"workers={len(workers)}, threads={threads}{limit}, "
            f"status={self.status}{adapting}{dashboard})"
        )

    def _repr_html_(self) -> str:
        from localsched import reprs

        return reprs.cluster_html(
            reprs.cluster_snapshot(self), f"{type(self).__name__} {self.name}"
        )

    def __rich__(self) -> Any:
        from localsched import reprs

        return reprs.cluster_rich(
            reprs.cluster_snapshot(self), f"{type(self).__name__} {self.name}"
        )


def _refuse(exc: BaseException) -> None:
    raise exc


def _shutdown_message() -> Any:
    from localsched.transport.protocol import Shutdown

    return Shutdown(reason="cluster closing")


#: Keyword arguments ``LocalCluster.__init__`` takes out of ``**kwargs``.
_KEYWORDS_TAKEN_BELOW = frozenset(
    {
        "scheduler_kwargs",
        "plugins",
        "preload",
        "preload_argv",
        "local_directory",
        "memory_target_fraction",
        "memory_spill_fraction",
        "memory_pause_fraction",
        "memory_terminate_fraction",
        "memory_pause_timeout",
    }
)


def _start_memory_monitor(
    runtime: SchedulerRuntime, memory_limit: int, kwargs: dict[str, Any]
) -> MemoryMonitor | None:
    """The memory monitor (``localsched.runtime.memory``), unless there is no limit.

    Thresholds: dask's worker keyword arguments ``memory_target_fraction``,
    ``memory_spill_fraction``, ``memory_pause_fraction``,
    ``memory_terminate_fraction`` (a fraction, or False: off), else dask's
    ``distributed.worker.memory.*`` config; ``memory_pause_timeout``: seconds.
    """
    fractions = {
        name: kwargs.pop(f"memory_{name}_fraction", None)
        for name in ("target", "spill", "pause", "terminate")
    }
    thresholds = MemoryThresholds.resolve(
        pause_timeout=kwargs.pop("memory_pause_timeout", 30.0), **fractions
    )
    if not memory_limit:
        return None
    monitor = MemoryMonitor(runtime, thresholds)
    monitor.start()
    return monitor
