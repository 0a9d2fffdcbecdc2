"""Adaptive scaling: the pool of worker processes follows the work.

``cluster.adapt(minimum=, maximum=, ...)`` returns an :class:`Adaptive`, which
runs dask's loop (``distributed.deploy.adaptive_core``) on the scheduler
thread's timer instead of an event loop:

1. ``target = scheduler.adaptive_target(target_duration)``, clamped to
   ``[minimum, maximum]``;
2. ``recommendations(target)``: more workers than planned -> "up"; fewer ->
   ``workers_to_close(target=)`` names candidates, and only a worker named
   ``wait_count`` consecutive times is closed (no flapping on one low reading);
3. "up" starts the missing processes at once (each start is a non-blocking
   ``fork``/``exec``, so they boot in parallel); "down" retires workers
   gracefully: no new work, their tasks finish, their results stay with the
   cluster (results never live only inside a worker here), then they exit.

Every decision other than "same" is appended to :attr:`Adaptive.log`.

State lives on the scheduler thread. Methods a user calls from another thread
(``recommendations``, ``target``, ``stop``, ``summary``) hop onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from localsched.units import parse_timedelta

if TYPE_CHECKING:
    from datetime import timedelta

    from localsched.deploy.local import LocalCluster
    from localsched.runtime.scheduler_thread import PeriodicCallback
    from localsched.scheduler.scheduler import Scheduler
    from localsched.scheduler.tasks import WorkerState

logger = logging.getLogger("localsched.deploy.adaptive")

#: Decisions kept in ``Adaptive.log`` (dask's ``admin.low-level-log-length``).
LOG_LENGTH = 1000

AdaptiveStateName = Literal["starting", "running", "stopped", "inactive"]


def close_active_workers(
    scheduler: Scheduler, keep: int, attribute: str = "address", **kwargs: Any
) -> list[Any]:
    """``scheduler.workers_to_close`` among the workers not already retiring.

    The core counts and ranks every worker it knows, retiring ones included: a
    plain ``workers_to_close(target=keep + retiring)`` may pick a worker that is
    already on its way out and so close fewer than needed. Asking for one more
    at a time until enough staying ones are picked keeps dask's order (idle
    workers holding the fewest bytes first) and its whole ``key`` groups.
    Scheduler thread only.
    """
    workers = scheduler.workers
    leaving = {a for a, ws in workers.items() if ws.status not in ("running", "paused")}
    wanted = len(workers) - len(leaving) - keep
    if wanted <= 0:
        return []
    picked: list[Any] = []
    for extra in range(len(leaving) + 1):
        chosen = scheduler.workers_to_close(
            n=wanted + extra, attribute="address", **kwargs
        )
        picked = [a for a in chosen if a not in leaving]
        if len(picked) >= wanted:
            break
    return [getattr(workers[a], attribute) for a in picked]


class Adaptive:
    """Adaptively start and retire workers as the load changes (dask's ``Adaptive``).

    Usually made by :meth:`LocalCluster.adapt`, which also stops the previous one.

    Parameters
    ----------
    cluster
        The cluster whose workers are started and retired.
    interval
        Time between two decisions (``"1s"``, a number of seconds or a
        ``timedelta``).
    minimum
        Never fewer workers than this.
    maximum
        Never more workers than this; None: dask's
        ``distributed.adaptive.maximum`` (no bound by default, as dask).
    wait_count
        Consecutive times a worker must be suggested for closing before it is
        retired.
    target_duration
        Time in which the current work should complete; shorter scales up more.
    worker_key
        Groups workers for ``workers_to_close``: a group retires together.
    **kwargs
        Passed to ``Scheduler.workers_to_close`` (``memory_ratio``, ...).

    Attributes
    ----------
    log : deque of (time, dict)
        Each decision to scale, e.g. ``(t, {"status": "up", "n": 4})`` or
        ``(t, {"status": "down", "workers": [2, 3]})``.
    close_counts : dict
        Worker name -> consecutive times it was suggested for closing.
    state : str
        ``"starting"`` until picked up (the caller's event loop, or the first
        tick), ``"running"`` while adapting, ``"stopped"`` after :meth:`stop`,
        ``"inactive"`` without a timer (``interval=0``).
    """

    def __init__(
        self,
        cluster: LocalCluster,
        interval: str | float | timedelta | None = None,
        minimum: int | None = None,
        maximum: int | float | None = None,
        wait_count: int | None = None,
        target_duration: str | float | timedelta | None = None,
        worker_key: Callable[[WorkerState], Hashable] | None = None,
        **kwargs: Any,
    ) -> None:
        interval = _configured("interval", interval, "1s")
        minimum = int(_configured("minimum", minimum, 0))
        wait_count = int(_configured("wait-count", wait_count, 3))
        target_duration = _configured("target-duration", target_duration, "5s")
        # dask's default: no bound. The target is already bounded by the work
        # (dask's rule: never more workers than ready tasks, each worker given
        # ``target_duration`` of work), and sleeping or I/O-bound tasks do gain
        # from more workers than cores; for CPU-bound work pass
        # ``maximum=cluster.default_maximum_workers()`` (docs/adaptive.md).
        maximum = _configured("maximum", maximum, math.inf)
        if not isinstance(maximum, int) and not math.isinf(maximum):
            raise ValueError(f"maximum must be int or inf; got {maximum}")
        if minimum < 0 or minimum > maximum:
            raise ValueError(
                f"minimum must be between 0 and maximum; got {minimum} > {maximum}"
            )
        if wait_count < 1:
            raise ValueError(f"wait_count must be at least 1; got {wait_count}")
        self.cluster = cluster
        self.interval = parse_timedelta(interval, "seconds")
        self.minimum = minimum
        self.maximum = maximum
        self.wait_count = wait_count
        self.target_duration = parse_timedelta(target_duration)
        self.worker_key = worker_key
        self._workers_to_close_kwargs = kwargs
        self.close_counts: defaultdict[Hashable, int] = defaultdict(int)
        self.log: deque[tuple[float, dict[str, Any]]] = deque(maxlen=LOG_LENGTH)
        #: The last target computed (None before the first decision).
        self.last_target: int | None = None
        self._adapting = False
        self.periodic_callback: PeriodicCallback | None = None
        self.state: AdaptiveStateName
        #: ``_started`` (event loop or scheduler thread) and ``stop`` (any
        #: thread) check and change ``state`` under it: a stop is never undone.
        self._state_lock = threading.Lock()
        if self.interval > 0:
            self_ref = weakref.ref(self)

            def adapt_tick() -> None:
                adaptive = self_ref()
                if adaptive is not None:
                    adaptive._tick()

            # As dask: "starting" until the caller's event loop (the one an
            # asynchronous cluster runs in) or the timer's first tick picks it
            # up; "running" at once for a caller without a running loop.
            self.state = "starting"
            self.periodic_callback = cluster.runtime.add_periodic(
                self.interval, adapt_tick, name="adaptive"
            )
            loop = _running_loop()
            if loop is None:
                self.state = "running"
            else:
                loop.call_soon(self._started)
            logger.info(
                "Adaptive scaling started: minimum=%s maximum=%s", minimum, maximum
            )
        else:
            self.state = "inactive"

    # -- the workers, as dask's AdaptiveCore names them ----------------------------

    @property
    def plan(self) -> set[Hashable]:
        """Names of the workers that should exist: started and not leaving."""
        return self.requested

    @property
    def requested(self) -> set[Hashable]:
        """Names of the worker processes started and not retiring or leaving."""
        return set(self._on_scheduler(self.cluster._staying_worker_names))

    @property
    def observed(self) -> set[Hashable]:
        """Names of the workers that joined the scheduler and are not retiring."""

        def observed() -> set[Hashable]:
            return {
                ws.name
                for ws in self.cluster.scheduler.workers.values()
                if ws.status in ("running", "paused")
            }

        return set(self._on_scheduler(observed))

    # -- decisions -------------------------------------------------------------------

    def target(self) -> int:
        """Workers the scheduler wants now (``Scheduler.adaptive_target``)."""
        scheduler = self.cluster.scheduler
        return self._on_scheduler(
            lambda: scheduler.adaptive_target(target_duration=self.target_duration)
        )

    def safe_target(self) -> int:
        """:meth:`target` clamped to ``[minimum, maximum]``."""
        n = self.target()
        if n > self.maximum:
            n = int(self.maximum)
        return max(n, self.minimum)

    def workers_to_close(self, target: int) -> list[Hashable]:
        """Names of workers to retire to come down to ``target`` workers.

        Dispatches to ``Scheduler.workers_to_close`` (idle workers holding the
        fewest bytes first, never a worker with a seceded task, ``minimum``
        kept); workers already retiring are neither counted nor returned.
        """

        return self._on_scheduler(
            lambda: close_active_workers(
                self.cluster.scheduler,
                target,
                key=self.worker_key,
                attribute="name",
                **self._workers_to_close_kwargs,
            )
        )

    def recommendations(self, target: int) -> dict[str, Any]:
        """``{"status": "same" | "up" | "down", ...}`` for this ``target``.

        "down" lists only workers suggested ``wait_count`` consecutive times;
        every call counts one suggestion, as in dask.
        """
        return self._on_scheduler(lambda: self._recommendations(target))

    def _recommendations(self, target: int) -> dict[str, Any]:
        plan = self.plan
        if target == len(plan):
            self.close_counts.clear()
            return {"status": "same"}
        if target > len(plan):
            self.close_counts.clear()
            return {"status": "up", "n": target}
        if plan - self.observed:
            # Workers still starting are never the ones to close (they boot in
            # well under a second): wait until they joined to compare loads.
            self.close_counts.clear()
            return {"status": "same"}
        to_close = set(self.workers_to_close(target=target))
        firmly_close = []
        for name in to_close:
            self.close_counts[name] += 1
            if self.close_counts[name] >= self.wait_count:
                firmly_close.append(name)
        for name in list(self.close_counts):
            if name in firmly_close or name not in to_close:
                del self.close_counts[name]
        if firmly_close:
            return {"status": "down", "workers": sorted(firmly_close, key=str)}
        return {"status": "same"}

    def adapt(self) -> None:
        """One decision: compute the target, recommend, scale up or down."""
        self._on_scheduler(self._adapt)

    def _adapt(self) -> None:
        if self._adapting:
            return
        self._adapting = True
        try:
            target = self.safe_target()
            self.last_target = target
            recommendations = self._recommendations(target)
            status = recommendations.pop("status")
            if status != "same":
                self.log.append((time.time(), {"status": status, **recommendations}))
            if status == "up":
                self.scale_up(**recommendations)
            elif status == "down":
                self.scale_down(**recommendations)
        finally:
            self._adapting = False

    def scale_up(self, n: int) -> None:
        """Start workers until ``n`` are planned (all at once, in parallel)."""
        self._on_scheduler(lambda: self.cluster._scale_up_to(n))

    def scale_down(self, workers: Iterable[Hashable]) -> None:
        """Retire these workers (by name) gracefully and close them."""
        names = list(workers)
        if names:
            logger.info("Retiring workers %s", names)
            self._on_scheduler(lambda: self.cluster._retire_names(names))

    # -- lifecycle -------------------------------------------------------------------

    def _started(self) -> None:
        with self._state_lock:
            if self.state == "starting":
                self.state = "running"

    def _tick(self) -> None:
        self._started()
        if self.state != "running":
            return
        if self.cluster.status != "running":
            self.stop(reason="cluster-not-running")
            return
        try:
            self._adapt()
        except Exception:
            failure = getattr(getattr(self.cluster, "_restarts", None), "failure", None)
            if failure is not None:
                # Workers cannot start on this machine: retrying every interval
                # would only repeat the error.
                logger.error("Adaptive scaling stops: %s", failure)
                self.stop(reason="workers-cannot-start")
                return
            logger.warning(
                "Adaptive encountered an error while adapting", exc_info=True
            )

    def stop(self, reason: str = "unknown") -> None:
        """Stop adapting (idempotent); the workers stay as they are."""
        with self._state_lock:
            if self.state in ("inactive", "stopped"):
                return
            self.state = "stopped"
        if self.periodic_callback is not None:
            self.periodic_callback.stop()
            self.periodic_callback = None
        logger.info(
            "Adaptive scaling stopped: minimum=%s maximum=%s. Reason: %s",
            self.minimum,
            self.maximum,
            reason,
        )

    def _on_scheduler(self, function: Callable[[], Any]) -> Any:
        # Inline on the scheduler thread; from elsewhere, run there and wait.
        return self.cluster.runtime.call(function).result()

    # -- display ---------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The adaptive state as plain data (for reprs and dashboards)."""
        runtime = self.cluster.runtime
        if runtime.is_running:
            # Read where the state changes, so counts and log agree.
            with contextlib.suppress(RuntimeError):  # it stopped meanwhile
                return runtime.call(self._summary).result()
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        last = self.log[-1] if self.log else None
        return {
            "state": self.state,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "interval": self.interval,
            "wait_count": self.wait_count,
            "target_duration": self.target_duration,
            "target": self.last_target,
            "close_counts": dict(self.close_counts),
            "decisions": len(self.log),
            "last_decision": None if last is None else {"time": last[0], **last[1]},
        }

    def __repr__(self) -> str:
        target = "" if self.last_target is None else f", target={self.last_target}"
        return (
            f"<Adaptive: minimum={self.minimum}, maximum={self.maximum}, "
            f"state={self.state}{target}, decisions={len(self.log)}>"
        )

    def __del__(self) -> None:
        if getattr(self, "state", "inactive") in ("starting", "running"):
            # At interpreter shutdown the runtime may be gone already.
            with contextlib.suppress(Exception):
                self.stop(reason="adaptive-deleted")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _configured(name: str, given: Any, default: Any) -> Any:
    """``given``, else dask's ``distributed.adaptive.<name>`` config when the
    program imported dask, else dask's default."""
    if given is not None:
        return given
    config = sys.modules.get("dask.config")
    if config is not None:
        value = config.get(f"distributed.adaptive.{name}", None)
        if value is not None:
            return value
    return default
