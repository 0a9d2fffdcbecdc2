"""Starting the cluster's child processes: workers and the shared-memory janitor.

Children are fresh interpreters started with ``subprocess`` (``python -m ...``),
not ``multiprocessing`` processes: ``multiprocessing``'s spawn and forkserver
children re-import the user's ``__main__`` module, which re-runs an unguarded
script's ``Client()`` in every worker and costs an import of everything the
script imports. Ours import only the worker's modules (about 60 ms).

Each child gets one end of a socket pair as an inherited file descriptor and
runs in its own session, so a Ctrl-C in the terminal reaches the user's program
and not the workers (dd#1925). A process's exit is watched through a pidfd
where the kernel has them (Linux 5.3+), else through its pipe's EOF.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.connection import Connection


class ChildProcess:
    """A child started with ``subprocess``, with ``multiprocessing``'s interface."""

    def __init__(self, args: list[str], pass_fds: tuple[int, ...], name: str) -> None:
        self.name = name
        self._popen = subprocess.Popen(
            [sys.executable, *args],
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self._popen.pid
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)

    @property
    def sentinel(self) -> int | None:
        """A file descriptor readable once the process exited (None: use EOF)."""
        return self._pidfd

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)
        if self._popen.returncode is not None and self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.terminate()


def start_worker(
    nthreads: int,
    prefix: str,
    directory: str,
    name: str,
    resources: Mapping[str, float] | None = None,
) -> tuple[ChildProcess, Connection]:
    """Start a worker process; return it and the scheduler's end of its pipe."""
    ours, theirs = multiprocessing.Pipe(duplex=True)
    try:
        fd = theirs.fileno()
        args = ["-m", "localsched.worker", str(fd), str(nthreads), prefix, directory]
        if resources:
            args.append(json.dumps(dict(resources)))
        process = ChildProcess(
            args,
            pass_fds=(fd,),
            name=name,
        )
    finally:
        theirs.close()
    return process, ours


def start_janitor(prefix: str, directory: str) -> tuple[ChildProcess, Connection]:
    """Start the janitor; return it and the write end that keeps it waiting."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        fd = reader.fileno()
        process = ChildProcess(
            ["-m", "localsched.transport.janitor", str(fd), prefix, directory],
            pass_fds=(fd,),
            name="localsched-janitor",
        )
    finally:
        reader.close()
    return process, writer
