"""Tasks inside tasks: ``get_worker``, ``secede``, ``rejoin``, ``print`` and
``warn`` (dask's functions of the same names).

A task thread records the worker and the task it runs in :data:`thread_state`
while the task executes; these functions read it, and so do ``get_client`` and
``worker_client`` in :mod:`localsched.client.task_client` (the worker never
imports the client: the client of its tasks is made there, on first use, and
only kept by the worker). A seceded task stops counting
against its worker's threads: the worker starts another thread for its queue and
tells the scheduler (``LongRunning``, the core's ``TaskSeceded``).

``print`` and ``warn`` in a task also log a ``"print"`` / ``"warn"`` event,
which every client of the user's process subscribes to: the text appears
there too.
"""

from __future__ import annotations

import builtins
import pickle
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from localsched.worker.main import Worker

__all__ = ["get_worker", "print", "rejoin", "secede", "warn"]

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


def print(
    *args: Any,
    sep: str | None = " ",
    end: str | None = "\n",
    file: TextIO | None = None,
    flush: bool = False,
) -> None:
    """The built-in ``print``, which in a task also prints on the clients.

    Outside a task, exactly ``builtins.print``. Inside one, it logs a
    ``"print"`` event, and each client of the user's process prints the text
    to its ``sys.stdout`` (or ``sys.stderr``): in a notebook too, where a
    worker's own output never shows. Unlike dask's, it does not also print in
    the worker: a worker writes to the user's terminal already, so each line
    would appear twice.

    Parameters
    ----------
    *args, sep, end, flush
        As ``builtins.print``; the arguments are sent as ``str(arg)``.
    file
        ``sys.stdout`` or ``sys.stderr`` (None: ``sys.stdout``).

    Raises
    ------
    TypeError
        In a task, ``file`` is another stream.

    Examples
    --------
    >>> from localsched import print
    >>> def task():
    ...     print("Hello from a worker!")
    >>> client.submit(task).result()  # doctest: +SKIP
    Hello from a worker!
    """
    worker = getattr(thread_state, "worker", None)
    if worker is not None:
        msg: dict[str, Any] = {
            "args": tuple(map(str, args)),
            "sep": sep,
            "end": end,
            "flush": flush,
        }
        if file is sys.stdout:
            msg["file"] = 1
        elif file is sys.stderr:
            msg["file"] = 2
        elif file is not None:
            raise TypeError(
                "Remote printing to arbitrary file objects is not supported. file "
                f"kwarg must be one of None, sys.stdout, or sys.stderr; got: {file!r}"
            )
        worker.log_event("print", msg)
        return
    builtins.print(*args, sep=sep, end=end, file=file, flush=flush)


def warn(
    message: str | Warning,
    category: type[Warning] | None = UserWarning,
    stacklevel: int = 1,
    source: Any = None,
) -> None:
    """``warnings.warn``, which in a task also warns on the clients.

    Outside a task, exactly ``warnings.warn``. Inside one, the warning is
    logged as a ``"warn"`` event, and each client of the user's process issues
    it (under its own warning filters; ``stacklevel`` and ``source`` do not
    apply there). Unlike dask's, it is not also issued in the worker, whose
    stderr reaches the user's already (it would show twice).

    Examples
    --------
    >>> from localsched import warn
    >>> def task():
    ...     warn("A warning from a worker.")
    >>> client.submit(task).result()  # doctest: +SKIP
    UserWarning: A warning from a worker.
    """
    worker = getattr(thread_state, "worker", None)
    if worker is not None:
        worker.log_event(
            "warn",
            {"message": pickle.dumps(message), "category": pickle.dumps(category)},
        )
        return
    warnings.warn(message, category, stacklevel + 1, source)
