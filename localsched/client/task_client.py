"""The client of a worker's tasks: ``get_client()``, ``worker_client()``.

The client a task gets is a plain :class:`~localsched.client.client.Client` on
the worker's :class:`~localsched.worker.link.PipeLink`, one per worker
(``worker-client-<address>``), shared by its tasks. On the scheduler's side
the same request handler answers as for a client in the user's process, so the
client behaves the same. This module is where the worker's tasks meet the
client: the worker itself never imports the client.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from localsched.worker.context import get_worker, rejoin, secede, thread_state

if TYPE_CHECKING:
    from localsched.client.client import Client
    from localsched.worker.link import PipeLink
    from localsched.worker.main import Worker

__all__ = ["client_of", "get_client", "local_client", "task_client", "worker_client"]


def task_client(link: PipeLink, timeout: Any = None) -> Client:
    """The client of a worker's tasks, on the worker's link.

    Raises
    ------
    TimeoutError
        (an ``OSError``, as dask's) The scheduler did not answer within
        ``timeout``.
    """
    from localsched.client.client import Client

    return Client(link=link, set_as_default=False, timeout=timeout)


def client_of(worker: Worker, timeout: Any = None) -> Client:
    """The client of ``worker``'s tasks, made on first use (connecting within
    ``timeout``, as dask's worker client). The worker only keeps it (and routes
    its link's replies): it never imports the client."""
    link = worker.pipe_link()  # takes the same lock: before it
    with worker._client_lock:
        client: Client | None = worker._client
        if client is None:
            client = worker._client = task_client(link, timeout)
        if worker.owns_process and not worker._drives_dask and "dask" in sys.modules:
            # As in dask, where ``dask.compute`` in a task falls back to
            # ``get_client()``: collections (persisted ones that arrived
            # pickled, too) compute on the cluster. A worker thread in the
            # user's process keeps the user's setting. Only once dask is
            # imported: a task that never uses dask does not pay for it.
            from localsched.client.dask_collections import use_localsched_for_dask

            worker._drives_dask = use_localsched_for_dask()
        return client


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
        return client_of(worker, timeout)
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


@contextlib.contextmanager
def worker_client(timeout: Any = None, separate_thread: bool = True) -> Iterator[Any]:
    """Get a client for this task; the task secedes while it is held.

    Parameters
    ----------
    timeout
        Seconds (or a duration string) to connect the task's client in, when
        this worker's tasks have none yet; ``TimeoutError`` (an ``OSError``)
        after that, as in dask.
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
