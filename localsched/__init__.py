"""localsched: dask.distributed's scheduler for one machine.

The public API is a faithful subset of ``distributed``'s: same names, signatures
and semantics. This release contains the scheduler core and its dask-named
``Scheduler`` object with plugins; the process runtime (``Client``,
``LocalCluster``) builds on it.
"""

from localsched.errors import KilledWorker, NoValidWorkerError
from localsched.plugins import SchedulerPlugin, WorkerPlugin
from localsched.scheduler.scheduler import Scheduler

__all__ = [
    "KilledWorker",
    "NoValidWorkerError",
    "Scheduler",
    "SchedulerPlugin",
    "WorkerPlugin",
]
