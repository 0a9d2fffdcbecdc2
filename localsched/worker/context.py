"""Tasks inside tasks: ``get_worker``, ``secede``, ``rejoin`` (dask's functions
of the same names).

A task thread records the worker and the task it runs in :data:`thread_state`
while the task executes; these functions read it, and so do ``get_client`` and
``worker_client`` in :mod:`localsched.client.task_client` (the worker never
imports the client: the client of its tasks is made there, on first use, and
only kept by the worker). A seceded task stops counting
against its worker's threads: the worker starts another thread for its queue and
tells the scheduler (``LongRunning``, the core's ``TaskSeceded``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localsched.worker.main import Worker

__all__ = ["get_worker", "rejoin", "secede"]

#: Per task thread: ``worker`` and ``key``, ``run_id``, ``start_time`` of the task
#: it runs (unset between tasks), ``seceded``.
thread_state = threading.local()


def get_worker() -> Worker:
    """Get the worker currently running this task.

    Raises
    ------
    ValueError
        Not called inside a task.

    Examples
    --------
    >>> def f():
    ...     worker = get_worker()  # The worker on which this task is running
    ...     return worker.address
    >>> future = client.submit(f)  # doctest: +SKIP
    """
    worker = getattr(thread_state, "worker", None)
    if worker is None:
        raise ValueError("No worker found")
    return worker


def secede() -> None:
    """Have this task secede from the worker's thread pool.

    This opens up a new scheduling slot and a new thread for a new task, which
    is useful while the task waits for other tasks (``client.gather``).

    Raises
    ------
    ValueError
        Not called inside a task.
    KeyError
        The task already seceded.
    """
    get_worker()._secede()


def rejoin() -> None:
    """Have this task rejoin the worker's thread pool.

    Blocks until a slot opens: the next thread of the worker to finish a task
    (or an idle one) leaves the pool to let this one in. A no-op for a task
    that did not secede.
    """
    worker = getattr(thread_state, "worker", None)
    if worker is not None:
        worker._rejoin()
