"""Tasks inside tasks: ``get_worker``, ``get_client``, ``secede``, ``rejoin``,
``worker_client`` (dask's functions of the same names).

A task thread records the worker and the task it runs in :data:`thread_state`
while the task executes; these functions read it. ``get_client()`` in a task
returns the worker's client: a :class:`~localsched.client.client.Client` on a
:class:`~localsched.worker.link.PipeLink`, which talks to the scheduler over the
worker's own pipe. A seceded task stops counting
against its worker's threads: the worker starts another thread for its queue and
tells the scheduler (``LongRunning``, the core's ``TaskSeceded``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localsched.worker.main import Worker

__all__ = [
    "get_client",
    "get_worker",
    "local_client",
    "rejoin",
    "secede",
    "worker_client",
]

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


def get_client(
    address: Any = None, timeout: Any = None, resolve_address: bool = True
) -> Any:
    """Get a client while within a task (else the default client).

    Inside a task: the worker's client, which submits to the same scheduler over
    the worker's pipe; its subtasks run ahead of the task's siblings.

    Raises
    ------
    ValueError
        Outside a task, when there is no default client and no ``address``.

    Examples
    --------
    >>> def f():
    ...     client = get_client()
    ...     futures = client.map(lambda x: x + 1, range(10))  # spawn many tasks
    ...     return sum(client.gather(futures))
    >>> future = client.submit(f)  # doctest: +SKIP
    """
    worker = getattr(thread_state, "worker", None)
    if worker is not None and not address:
        return worker._get_client()
    from localsched.client.client import Client, default_client

    try:
        client = default_client()
    except ValueError:
        client = None
    if client is not None and (not address or client.scheduler.address == address):
        return client
    if address:
        return Client(address, timeout=timeout)
    raise ValueError("No global client found and no address provided")


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


@contextlib.contextmanager
def worker_client(timeout: Any = None, separate_thread: bool = True) -> Iterator[Any]:
    """Get a client for this task; the task secedes while it is held.

    Parameters
    ----------
    timeout
        Accepted for dask compatibility.
    separate_thread
        Secede from the worker's thread pool while in the block (and rejoin on
        exit), so that a one-thread worker can run the subtasks waited for.

    Examples
    --------
    >>> def func(x):
    ...     with worker_client() as c:  # connect from worker back to scheduler
    ...         a = c.submit(inc, x)  # this task can submit more tasks
    ...         b = c.submit(dec, x)
    ...         return c.gather([a, b])  # and gather results
    """
    get_worker()
    client = get_client(timeout=timeout)
    with contextlib.ExitStack() as stack:
        if separate_thread:
            try:
                secede()
            except KeyError:  # already seceded
                pass
            else:
                stack.callback(rejoin)
        yield client


def local_client(*args: Any, **kwargs: Any) -> Any:
    """dask's old name of :func:`worker_client` (it warns, as dask's does)."""
    import warnings

    warnings.warn("local_client has moved to worker_client", stacklevel=2)
    return worker_client(*args, **kwargs)
