"""What dask's ``Cluster``/``SpecCluster`` offer beyond starting and closing,
for ``LocalCluster``: ``status`` comparable with dask's ``Status``,
``scheduler_info``, ``loop``, a live ``workers`` mapping and the ``cores=``/
``memory=`` forms of ``scale`` and ``adapt``.

dask's own tests and tools compare ``cluster.status == Status.running`` (an
``Enum`` of strings); localsched's statuses stay plain strings
(``"running"``), as a ``str`` subclass that also equals the dask member of the
same name, so that both spellings work without importing distributed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from localsched.deploy.asynchronous import AsyncClusterMixin
from localsched.status import StatusStr
from localsched.units import parse_bytes

if TYPE_CHECKING:
    from localsched.deploy.local import LocalCluster

__all__ = ["DaskClusterSurface", "WorkerAddress", "WorkersView"]


class WorkerAddress(str):
    """A worker's address (``cluster.workers`` values), with what dask's
    ``Worker`` objects there are most often asked: ``name``, ``address``,
    ``nthreads``, ``memory_limit``, ``status``."""

    name: Any
    nthreads: int
    memory_limit: int | None
    status: str

    @property
    def address(self) -> str:
        return str(self)


class WorkersView(Mapping[Any, WorkerAddress]):
    """``cluster.workers``: worker name -> address, live (as dask's dict, which
    the cluster empties when it closes), read from the scheduler's table."""

    __slots__ = ("_cluster",)

    def __init__(self, cluster: LocalCluster) -> None:
        self._cluster = cluster

    def _now(self) -> dict[Any, WorkerAddress]:
        cluster = self._cluster
        if cluster.status in ("closed", "created"):
            return {}
        now = {}
        for address, ws in list(cluster.scheduler.workers.items()):
            worker = WorkerAddress(address)
            worker.name = ws.name
            worker.nthreads = ws.nthreads
            worker.memory_limit = ws.memory_limit
            worker.status = ws.status
            now[ws.name] = worker
        return now

    def __getitem__(self, name: Any) -> WorkerAddress:
        return self._now()[name]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())

    def __repr__(self) -> str:
        return repr(self._now())


class DaskClusterSurface(AsyncClusterMixin):
    """dask's cluster attributes, mixed into ``LocalCluster``."""

    _status: StatusStr
    _tornado_loop: Any = None

    @property
    def status(self) -> StatusStr:
        """``"created"`` (asynchronous, not awaited yet), ``"starting"``,
        ``"running"``, ``"closing"`` or ``"closed"``; equal to dask's
        ``Status`` member of the same name as well."""
        return self._status

    @status.setter
    def status(self, value: Any) -> None:
        self._status = StatusStr(getattr(value, "value", value))

    @property
    def loop(self) -> Any:
        """The tornado ``IOLoop`` of the event loop that started an
        asynchronous cluster (dask's ``Cluster.loop``; ``Adaptive`` subclasses
        of dask schedule their callbacks on it); None for a synchronous one."""
        return self._tornado_loop

    def _remember_loop(self) -> None:
        """Called on the event loop that awaits the cluster's start."""
        try:
            from tornado.ioloop import IOLoop
        except ImportError:  # no tornado: no dask Adaptive to serve either
            return
        self._tornado_loop = IOLoop.current()

    @property
    def scheduler_info(self) -> dict[str, Any]:
        """The scheduler's identity and its workers' (dask's
        ``Cluster.scheduler_info``), read on the scheduler thread."""
        cluster: LocalCluster = self  # type: ignore[assignment]
        scheduler = cluster.scheduler
        runtime = getattr(cluster, "runtime", None)
        if runtime is None or not runtime.is_running:
            return {**scheduler.identity(), "workers": {}}
        info: dict[str, Any] = runtime.call(scheduler.identity).result(timeout=10.0)
        for address, worker in info["workers"].items():
            worker.setdefault("name", worker.get("id"))
            worker.setdefault("address", address)
        return info

    @property
    def worker_spec(self) -> dict[Any, dict[str, Any]]:
        """The workers asked for, as dask's ``SpecCluster.worker_spec``: name ->
        ``{"cls", "options"}``; the workers ``scale`` asked for count at once,
        under a placeholder name until they start."""
        cluster: LocalCluster = self  # type: ignore[assignment]
        if cluster.status not in ("running", "starting"):
            return {}
        names = cluster.runtime.call(cluster._staying_worker_names).result(10.0)
        names = names[: cluster._target]
        names += [f"pending-{i}" for i in range(cluster._target - len(names))]
        options = {
            "nthreads": cluster.threads_per_worker,
            "memory_limit": cluster.memory_limit,
        }
        spec = {"cls": "localsched.worker", "options": options}
        return {name: dict(spec) for name in names}

    def _n_from_resources(
        self, n: int, memory: str | int | None, cores: int | None
    ) -> int:
        """dask's ``scale(n, memory=, cores=)``: enough workers for each."""
        if cores is not None:
            n = max(n, math.ceil(cores / self._threads_per_worker()))
        if memory is not None:
            n = max(n, math.ceil(parse_bytes(memory) / self._memory_per_worker()))
        return n

    def _adapt_bounds(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """dask's ``adapt(minimum_cores=, maximum_cores=, minimum_memory=,
        maximum_memory=)`` as worker counts, merged with ``minimum``/``maximum``."""
        minimum_cores = kwargs.pop("minimum_cores", None)
        maximum_cores = kwargs.pop("maximum_cores", None)
        minimum_memory = kwargs.pop("minimum_memory", None)
        maximum_memory = kwargs.pop("maximum_memory", None)
        minimum = kwargs.get("minimum")
        maximum = kwargs.get("maximum")
        if minimum_cores is not None:
            at_least = math.ceil(minimum_cores / self._threads_per_worker())
            minimum = max(minimum or 0, at_least)
        if minimum_memory is not None:
            per_worker = self._memory_per_worker()
            at_least = math.ceil(parse_bytes(minimum_memory) / per_worker)
            minimum = max(minimum or 0, at_least)
        if maximum_cores is not None:
            at_most = math.floor(maximum_cores / self._threads_per_worker())
            maximum = min(math.inf if maximum is None else maximum, at_most)
        if maximum_memory is not None:
            per_worker = self._memory_per_worker()
            at_most = math.floor(parse_bytes(maximum_memory) / per_worker)
            maximum = min(math.inf if maximum is None else maximum, at_most)
        if minimum is not None:
            kwargs["minimum"] = minimum
        if maximum is not None:
            kwargs["maximum"] = maximum
        return kwargs

    def _threads_per_worker(self) -> int:
        cluster: LocalCluster = self  # type: ignore[assignment]
        return max(1, cluster.threads_per_worker)

    def _memory_per_worker(self) -> int:
        cluster: LocalCluster = self  # type: ignore[assignment]
        if not cluster.memory_limit:
            raise ValueError(
                "to use scale(memory=...) or adapt(..._memory=...) the workers "
                "need a memory_limit"
            )
        return int(cluster.memory_limit)
