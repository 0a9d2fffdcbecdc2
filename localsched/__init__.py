"""localsched: dask.distributed's scheduler for one machine.

The public API is a faithful subset of ``distributed``'s: same names, signatures
and semantics. ``Client()`` starts a ``LocalCluster`` of worker processes driven
by one scheduler thread; results move through shared memory.

Names are imported on first use (PEP 562), so that a worker process, which
imports ``localsched.worker.main``, does not pay for the client and scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from localsched.integrations import joblib_hook as _joblib_hook
from localsched.lazy_exports import lazy_exports

# Every logger of the package is a child of ``localsched``
# (``localsched.deploy.local``, ``localsched.runtime.scheduler_thread``...). The
# library adds no handler: until the application configures logging, Python's
# last-resort handler prints WARNING and above (a worker that crashed, memory
# pressure) and INFO stays quiet. A NullHandler here would silence those
# warnings too, which dask users would not expect.

# joblib's "localsched" backend, registered without importing joblib.
_joblib_hook.install()

_EXPORTS = {
    "Actor": "localsched.client.actor",
    "ActorFuture": "localsched.client.actor",
    "Adaptive": "localsched.deploy.adaptive",
    "CancelledError": "concurrent.futures",
    "BaseActorFuture": "localsched.client.actor",
    "Client": "localsched.client.client",
    "Event": "localsched.client.coordination",
    "Future": "localsched.client.future",
    "FutureCancelledError": "localsched.client.future",
    "KilledWorker": "localsched.errors",
    "LocalCluster": "localsched.deploy.local",
    "Lock": "localsched.client.coordination",
    "MultiLock": "localsched.client.multilock",
    "NoValidWorkerError": "localsched.errors",
    "Queue": "localsched.client.coordination",
    "Reschedule": "localsched.errors",
    "Scheduler": "localsched.scheduler.scheduler",
    "SchedulerPlugin": "localsched.plugins",
    "Semaphore": "localsched.client.coordination",
    "Variable": "localsched.client.coordination",
    "WorkerPlugin": "localsched.plugins",
    "as_completed": "localsched.client.future",
    "default_client": "localsched.client.client",
    "futures_of": "localsched.client.future",
    "get_task_metadata": "localsched.client.task_metadata",
    "get_task_stream": "localsched.client.control",
    "performance_report": "localsched.client.report",
    "progress": "localsched.client.progress",
    "fire_and_forget": "localsched.client.client",
    "get_client": "localsched.client.task_client",
    "get_worker": "localsched.worker.context",
    "local_client": "localsched.client.task_client",
    "print": "localsched.worker.context",
    "rejoin": "localsched.worker.context",
    "secede": "localsched.worker.context",
    "wait": "localsched.client.future",
    "warn": "localsched.worker.context",
    "worker_client": "localsched.client.task_client",
}

__all__ = [
    "Actor",
    "ActorFuture",
    "Adaptive",
    "BaseActorFuture",
    "CancelledError",
    "Client",
    "Event",
    "Future",
    "FutureCancelledError",
    "KilledWorker",
    "LocalCluster",
    "Lock",
    "MultiLock",
    "NoValidWorkerError",
    "Queue",
    "Reschedule",
    "Scheduler",
    "SchedulerPlugin",
    "Semaphore",
    "TimeoutError",
    "Variable",
    "WorkerPlugin",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "get_task_metadata",
    "get_task_stream",
    "get_worker",
    "local_client",
    "performance_report",
    "print",
    "progress",
    "rejoin",
    "secede",
    "wait",
    "warn",
    "worker_client",
]


#: dask.distributed re-exports the built-in (its timeouts raise it), and so do we.
TimeoutError = TimeoutError


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from concurrent.futures import CancelledError

    from localsched.client.actor import Actor, ActorFuture, BaseActorFuture
    from localsched.client.client import Client, default_client, fire_and_forget
    from localsched.client.coordination import Event, Lock, Queue, Semaphore, Variable
    from localsched.client.future import (
        Future,
        FutureCancelledError,
        as_completed,
        futures_of,
        wait,
    )
    from localsched.client.multilock import MultiLock
    from localsched.client.progress import progress
    from localsched.client.report import performance_report
    from localsched.client.task_client import get_client, worker_client
    from localsched.client.task_metadata import get_task_metadata
    from localsched.deploy.local import LocalCluster
    from localsched.errors import KilledWorker, NoValidWorkerError, Reschedule
    from localsched.plugins import SchedulerPlugin, WorkerPlugin
    from localsched.scheduler.scheduler import Scheduler
    from localsched.worker.context import get_worker, print, rejoin, secede, warn
