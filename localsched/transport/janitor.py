"""A tiny process that removes a cluster's shared memory if the cluster dies.

The cluster keeps the write end of a pipe; the janitor blocks reading the other
end. A clean close writes ``bye`` (the store already removed its segments). If
the user process dies instead, even by SIGKILL, the kernel closes the write end,
the read returns EOF, and the janitor removes every file with the store's prefix.
The janitor deliberately does not ask to die with its parent: it must outlive it.

It sweeps more than once. The kernel closes a dying process's files (our EOF)
before it signals the children that asked to die with it, so a worker can still
be writing a result into a new segment when the first sweep runs; later sweeps,
once every worker is surely dead, remove those too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from localsched.transport.segment_files import (
    attached_directories,
    remove_cluster_directory,
)


def run(conn: Connection, directory: str) -> None:
    """Wait for ``bye`` or EOF; on EOF (or SIGTERM) remove the cluster's
    ``directory`` and the directories it links to.

    ``multiprocessing`` terminates daemonic children with SIGTERM when the user
    process exits without closing its cluster: that also means "clean up".
    """

    # Read now as well as at the sweep: a close() that was not clean may have
    # removed the directory, and its links, before a late worker recreated the
    # fallback directory they named.
    known = attached_directories(directory)

    def on_term(signum: int, frame: object) -> None:
        remove_segments(directory, known)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        conn.recv_bytes()
    except (EOFError, OSError):
        sweep_until_quiet(directory, known=known)
    finally:
        with contextlib.suppress(OSError):
            conn.close()


#: Seconds between the sweeps after the cluster's process died.
RESWEEP_DELAYS = (0.2, 0.5, 1.0)


def sweep_until_quiet(
    directory: str,
    delays: tuple[float, ...] = RESWEEP_DELAYS,
    pause: Callable[[float], object] | None = None,
    known: list[str] | None = None,
) -> list[str]:
    """Remove the segments now, and again after each delay; every path removed.

    ``pause(seconds)`` waits between sweeps (default: an event never set). The
    fallback directory a worker may make after the first sweep is found again:
    its name is read before the first sweep removes the link to it. ``known``:
    attached directories read earlier, swept too.
    """
    if pause is None:
        pause = threading.Event().wait
    directories = _with_attached(directory, known)
    removed = _remove_all(directories)
    for delay in delays:
        pause(delay)
        removed += _remove_all(directories)
    return removed


def remove_segments(directory: str, known: list[str] | None = None) -> list[str]:
    """Remove the cluster's ``directory`` with every segment in it, and its
    fallback and spill directories (see ``segment_files``); never raises."""
    return _remove_all(_with_attached(directory, known))


def _with_attached(directory: str, known: list[str] | None) -> list[str]:
    found = [directory, *attached_directories(directory)]
    return found + [path for path in known or () if path not in found]


def _remove_all(directories: list[str]) -> list[str]:
    removed: list[str] = []
    for directory in directories:
        removed += remove_cluster_directory(directory)
    return removed


def main(argv: list[str]) -> None:
    """``python -m localsched.transport.janitor FD``: the pipe's read end."""
    # The directory comes through the pipe, not the command line: a command
    # line is visible to every user (``ps``).
    connection = Connection(int(argv[0]), writable=False)
    run(connection, connection.recv_bytes().decode())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
