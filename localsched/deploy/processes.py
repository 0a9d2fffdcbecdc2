"""Starting the cluster's child processes: workers and the shared-memory janitor
(and ``ThreadProcess``, the same interface for a worker run in a thread).

Children are fresh interpreters started with ``subprocess`` (``python -m ...``),
not ``multiprocessing`` processes: ``multiprocessing``'s spawn and forkserver
children re-import the user's ``__main__`` module, which re-runs an unguarded
script's ``Client()`` in every worker and costs an import of everything the
script imports. Ours import only the worker's modules (about 60 ms).

Each child gets one end of a socket pair as an inherited file descriptor and
runs in its own session, so a Ctrl-C in the terminal reaches the user's program
and not the workers (dd#1925). A process's exit is watched through a pidfd
where the kernel has them (Linux 5.3+), else through its pipe's EOF.

A worker's stderr is a pipe the scheduler thread reads (``supervision.py``): it
forwards the text to the user's ``sys.stderr`` (so prints and warnings from
tasks still show, in a notebook too) and keeps the last lines, which the error
naming a crashed worker quotes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localsched.deploy.template import ForkedProcess, Template
    from localsched.transport.executing import ExecutingPage
    from localsched.transport.shm import BlobWriter


class ChildProcess:
    """A child started with ``subprocess``, with ``multiprocessing``'s interface."""

    def __init__(
        self,
        args: list[str],
        pass_fds: tuple[int, ...],
        name: str,
        capture_stderr: bool = False,
    ) -> None:
        self.name = name
        self._popen = subprocess.Popen(
            [sys.executable, *args],
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE if capture_stderr else None,
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self._popen.pid
        #: Our end of the child's stderr pipe (non-blocking), or None.
        self.stderr = self._popen.stderr
        if self.stderr is not None:
            os.set_blocking(self.stderr.fileno(), False)
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
    writer: BlobWriter | None,
    name: str,
    resources: Mapping[str, float] | None = None,
    executing_page: ExecutingPage | None = None,
    warm_imports: Sequence[str] = (),
    template: Template | None = None,
) -> tuple[ChildProcess | ForkedProcess, Connection]:
    """Start a worker process; return it and the scheduler's end of its pipe.

    The worker writes results with ``writer``'s store directories (sent as the
    pipe's first message: a command line is visible to every user, with this
    process's ``multiprocessing`` authkey, as multiprocessing's children
    inherit it), records its
    executing tasks in ``executing_page`` if given and imports ``warm_imports``
    in the background once ready; its stderr is captured
    (``ChildProcess.stderr``). It is forked from ``template`` if given and
    working (``template.py``), else started as a fresh interpreter.
    """
    store = None
    if writer is not None:
        store = [writer.prefix, writer.directory, writer.fallback_directory]
    # The parent's multiprocessing authkey too, as multiprocessing gives its
    # children: a Manager's proxies passed to a task connect back with it.
    authkey = bytes(multiprocessing.current_process().authkey).hex()
    # This process's sys.path too (dask passes the client's): a module
    # directory added at run time is importable from the start.
    setup = {
        "store": store,
        "authkey": authkey,
        "sys_path": [p for p in sys.path if isinstance(p, str)],
        "dask_config": _dask_config(),
        "warm_imports": list(warm_imports),
    }
    ours, theirs = multiprocessing.Pipe(duplex=True)
    process: ChildProcess | ForkedProcess | None = None
    try:
        # Sent before the process starts (far below a socket's buffer: never
        # blocks), so that the new worker finds it at once.
        ours.send_bytes(json.dumps(setup).encode())
        fd = theirs.fileno()
        options: list[Any] = []
        if resources:
            options.append(f"--resources={json.dumps(dict(resources))}")
        if template is not None:
            fds = [fd]
            forked: list[Any] = [{"fd": 1}, str(nthreads), *options]
            if executing_page is not None:
                fds.append(executing_page.fileno())
                forked.append({"fd": 2, "prefix": "--executing-fd="})
            process = _fork(template, forked, fds, name)
        if process is None:
            pass_fds = [fd]
            if executing_page is not None:
                options.append(f"--executing-fd={executing_page.fileno()}")
                pass_fds.append(executing_page.fileno())
            args = ["-m", "localsched.worker", str(fd), str(nthreads), *options]
            process = ChildProcess(
                args, pass_fds=tuple(pass_fds), name=name, capture_stderr=True
            )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def start_janitor(
    directory: str, template: Template | None = None
) -> tuple[ChildProcess | ForkedProcess, Connection]:
    """Start the janitor for the store's ``directory`` (sent through the pipe,
    not the command line); return it and the write end that keeps it waiting.
    Forked from ``template`` if given and working (it writes to our stderr)."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    process: ChildProcess | ForkedProcess | None = None
    try:
        writer.send_bytes(directory.encode())  # waiting for it when it starts
        fd = reader.fileno()
        if template is not None:
            process = _fork_janitor(template, fd)
        if process is None:
            process = ChildProcess(
                ["-m", "localsched.transport.janitor", str(fd)],
                pass_fds=(fd,),
                name="localsched-janitor",
            )
    except BaseException:
        writer.close()
        raise
    finally:
        reader.close()
    return process, writer


def stop_janitor(process: Any, conn: Connection, is_clean: bool) -> None:
    """After a clean close say ``bye`` (the store removed every segment); else
    only close the pipe: at its EOF the janitor sweeps, and again for a moment
    after (``transport/janitor.py``), as if this process had died."""
    if is_clean:
        with contextlib.suppress(OSError):
            conn.send_bytes(b"bye")
    with contextlib.suppress(OSError):
        conn.close()
    process.join(5.0)
    if process.is_alive():
        process.kill()
        process.join(1.0)


def _dask_config() -> str | None:
    """This process's dask config, serialized as dask's Nanny hands it to its
    workers (``dask.config.set`` before the cluster starts reaches the tasks);
    None if the program never imported dask (nothing to inherit)."""
    config = sys.modules.get("dask.config")
    if config is None:
        return None
    try:
        serialized: str = config.serialize(config.global_config)
    except (TypeError, ValueError):  # a value JSON cannot carry: as dask, skip
        return None
    return serialized


class ThreadProcess:
    """A worker run in a thread of this process (``processes=False``)."""

    def __init__(self, worker: Any, conn: Connection, name: str) -> None:
        self._worker = worker
        self._conn = conn
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._done = threading.Event()
        self._r, self._w = os.pipe()
        self.pid = os.getpid()
        self.exitcode: int | None = None

    def _serve(self) -> None:
        try:
            self._worker.serve()
            self.exitcode = 0
        except BaseException:
            self.exitcode = 1
        finally:
            with contextlib.suppress(OSError):
                self._conn.close()
            os.write(self._w, b"x")

    def start(self) -> None:
        self._thread.start()

    @property
    def sentinel(self) -> int:
        return self._r

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in (self._r, self._w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._r = self._w = -1

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()


def _fork_janitor(template: Template, fd: int) -> ForkedProcess | None:
    """The janitor forked from ``template``, writing to our stderr (or nowhere
    if this process has none)."""
    try:
        stderr = os.dup(2)
    except OSError:
        stderr = os.open(os.devnull, os.O_WRONLY)
    try:
        return _fork_from(
            template,
            "localsched.transport.janitor",
            [{"fd": 1}],
            [stderr, fd],
            "localsched-janitor",
        )
    finally:
        os.close(stderr)


def _fork(
    template: Template, argv: list[Any], fds: list[int], name: str
) -> ForkedProcess | None:
    """A worker forked from ``template``, its stderr a pipe we read; None if
    the template cannot (the caller spawns instead)."""
    read_end, write_end = os.pipe()
    try:
        process = _fork_from(
            template, "localsched.worker", argv, [write_end, *fds], name
        )
    finally:
        os.close(write_end)
    if process is None:
        os.close(read_end)
        return None
    os.set_blocking(read_end, False)
    process.stderr = open(read_end, "rb", buffering=0)  # noqa: SIM115 (kept)
    return process


def _fork_from(
    template: Template, module: str, argv: list[Any], fds: list[int], name: str
) -> ForkedProcess | None:
    from localsched.deploy.template import TemplateError

    if template.is_broken:
        return None
    try:
        return template.fork(module, argv, fds, name)
    except TemplateError:
        return None
