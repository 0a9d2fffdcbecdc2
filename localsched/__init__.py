"""localsched: dask.distributed's scheduler for one machine.

The public API is a faithful subset of ``distributed``'s: same names, signatures
and semantics. ``Client()`` starts a ``LocalCluster`` of worker processes driven
by one scheduler thread; results move through shared memory.
"""

from localsched.client import Client
from localsched.cluster import LocalCluster
from localsched.errors import KilledWorker, NoValidWorkerError
from localsched.future import (
    Future,
    FutureCancelledError,
    as_completed,
    wait,
)
from localsched.plugins import SchedulerPlugin, WorkerPlugin
from localsched.scheduler.scheduler import Scheduler

__all__ = [
    "Client",
    "Future",
    "FutureCancelledError",
    "KilledWorker",
    "LocalCluster",
    "NoValidWorkerError",
    "Scheduler",
    "SchedulerPlugin",
    "WorkerPlugin",
    "as_completed",
    "wait",
]
