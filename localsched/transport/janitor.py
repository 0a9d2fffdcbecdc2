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


def run(conn: Connection, prefix: str, directory: str) -> None:
    """Wait for ``bye`` or EOF; on EOF (or SIGTERM) unlink ``directory/prefix*``.

    ``multiprocessing`` terminates daemonic children with SIGTERM when the user
    process exits without closing its cluster: that also means "clean up".
    """

    def on_term(signum: int, frame: object) -> None:
        remove_segments(prefix, directory)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        conn.recv_bytes()
    except (EOFError, OSError):
        sweep_until_quiet(prefix, directory)
    finally:
        with contextlib.suppress(OSError):
            conn.close()


#: Seconds between the sweeps after the cluster's process died.
RESWEEP_DELAYS = (0.2, 0.5, 1.0)


def sweep_until_quiet(
    prefix: str,
    directory: str,
    delays: tuple[float, ...] = RESWEEP_DELAYS,
    pause: Callable[[float], object] | None = None,
) -> list[str]:
    """Remove the segments now, and again after each delay; every path removed.

    ``pause(seconds)`` waits between sweeps (default: an event never set).
    """
    if pause is None:
        pause = threading.Event().wait
    removed = remove_segments(prefix, directory)
    for delay in delays:
        pause(delay)
        removed += remove_segments(prefix, directory)
    return removed


def remove_segments(prefix: str, directory: str) -> list[str]:
    """Unlink every file in ``directory`` whose name starts with ``prefix``, and
    the disk copy a spilled segment (a link, see ``spill.py``) points to."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if entry.is_symlink():  # a spilled segment: its disk copy too
                        target = os.readlink(entry.path)
                        if os.path.basename(target).startswith(prefix):
                            os.unlink(target)
                            removed.append(target)
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.path)
    return removed


if __name__ == "__main__":
    import sys

    fd, prefix, directory = sys.argv[1:]
    run(Connection(int(fd), writable=False), prefix, directory)
