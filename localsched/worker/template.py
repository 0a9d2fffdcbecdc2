"""``python -m localsched.worker.template FD``: the template process that forks workers.

Starting a worker as a fresh interpreter costs an interpreter start plus the
worker's imports (0.1-0.2 s of CPU each, more on a loaded machine). The
template pays that once: it imports the worker's modules and then, on request,
forks a child that runs ``python -m localsched.worker`` (or the janitor) with
everything already imported, in a few milliseconds. It is the cluster's own
fork server: a fresh interpreter, or a fork of the user's process made where
that is safe (``localsched.deploy.user_fork``: one Python thread, fork-safe
extension modules only; it then has the user's modules too), and it never
starts a thread, so a fork from it copies no lock held by another thread (it
refuses to fork once a warm import started one). Once idle it imports the
cluster's warm modules (numpy, pandas, ...), one between two requests, and its
later forks inherit them.

Protocol on ``FD`` (a ``SOCK_SEQPACKET`` socket: one message per datagram,
JSON, file descriptors passed with ``SCM_RIGHTS``)::

    cluster -> template   {"id": n, "module": M, "argv": [...]} + fds
                          (an argv item {"fd": i, "prefix": p} stands for
                          p followed by the number of the i-th fd)
    template -> cluster   {"id": n, "pid": p} + [pidfd]  (or {"id": n, "error": s})
                          {"exited": p, "code": c}  (Popen's returncode)
    cluster -> template   {"warm": [module, ...], "quiet": s}  (no answer: warm
                          imports once idle, ``worker.warming.TemplateWarmUp``)

The first fd of a request becomes the child's stderr. The template reaps its
children (SIGCHLD) and reports each exit code: the cluster cannot wait for a
process that is not its child. The pidfd opened before the reply (the child
cannot be reaped before the template's loop runs again) lets the cluster
watch and signal the child without pid-reuse races.

Lifetime: the template exits at its socket's EOF (the cluster closed) or
when the user's process ends (a pidfd of it: a socket inherited by a fork of
the user's process must not keep it alive). Not ``PR_SET_PDEATHSIG``: that
fires when the *thread* that started the template ends, and the template must
outlive the scheduler thread, to reap the janitor it forked. Workers it forked
ask Linux to SIGKILL them when the template dies, so they die with it; a
janitor does not: it must outlive the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from localsched.worker.warming import TemplateWarmUp

#: Largest request (a worker's argv: resources as JSON) and fds per request.
MAX_MESSAGE = 1 << 16
MAX_FDS = 8


def main(fd: int, parent: int) -> None:
    """Serve fork requests on socket ``fd`` until its EOF or the death of
    process ``parent`` (the user's), then exit."""
    sock = socket.socket(fileno=fd)
    parent_fd = _watch(parent)
    # What a child runs, imported once here (the point of the template), and
    # ctypes, which every child needs before it says hello (its name here,
    # PR_SET_PDEATHSIG in worker.main): 3-5 ms once, not in each child.
    import ctypes  # noqa: F401

    from localsched.transport import janitor
    from localsched.worker import __main__ as worker

    entries: dict[str, Callable[[list[str]], None]] = {
        "localsched.worker": worker.main,
        "localsched.transport.janitor": janitor.main,
    }

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    own_fds = (sock.fileno(), wake_r, wake_w, parent_fd)
    warming = TemplateWarmUp()
    while True:
        readable, _, _ = select.select(
            [sock.fileno(), wake_r, parent_fd], [], [], warming.timeout()
        )
        if not readable:
            warming.step()  # maybe one warm import, if all is quiet
            continue
        if parent_fd in readable:
            break  # the user's process died (its socket may live on in a fork)
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        warming.children.difference_update(_reap(sock))
        if sock.fileno() in readable:
            try:
                data, fds, _flags, _address = socket.recv_fds(
                    sock, MAX_MESSAGE, MAX_FDS
                )
            except OSError:
                data, fds = b"", []
            if not data:
                break  # the cluster closed or died
            request = json.loads(data)
            warming.on_request()
            if "warm" in request:
                warming.add(request["warm"], request["quiet"])
            elif warming.thread_starter is not None:
                refusal = (
                    f"the warm import of {warming.thread_starter!r} started a thread"
                )
                _refuse(sock, request["id"], fds, refusal)
            else:
                pid = _fork(sock, request, fds, own_fds, entries)
                if pid is not None:
                    warming.children.add(pid)
    os._exit(0)


def _refuse(sock: socket.socket, ident: int, fds: list[int], reason: str) -> None:
    for fd in fds:
        os.close(fd)
    _send(sock, {"id": ident, "error": reason}, [])


def _watch(parent: int) -> int:
    """A pidfd of the user's process, readable once that process ended."""
    fd = os.pidfd_open(parent)
    if os.getppid() != parent:  # it died before we opened it: end now
        os._exit(0)
    return fd


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    with contextlib.suppress(OSError):  # the cluster is gone: its EOF ends us
        socket.send_fds(sock, [json.dumps(message).encode()], fds)


def _reap(sock: socket.socket) -> list[int]:
    """Reap the children that ended, report their exit codes; their pids."""
    reaped: list[int] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)
        _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)}, [])


def _fork(
    sock: socket.socket,
    request: dict[str, Any],
    fds: list[int],
    own: tuple[int, ...],
    entries: dict[str, Callable[[list[str]], None]],
) -> int | None:
    """Fork the child ``request`` asks for; its pid (None: refused)."""
    ident = request["id"]
    try:
        entry = entries.get(request["module"])
        if entry is None:
            raise ValueError(f"the template does not run {request['module']!r}")
        argv = [
            f"{item.get('prefix', '')}{fds[item['fd']]}"
            if isinstance(item, dict)
            else str(item)
            for item in request["argv"]
        ]
        pid = os.fork()
    except Exception as exc:
        _refuse(sock, ident, fds, f"{type(exc).__name__}: {exc}")
        return None
    if pid == 0:
        _run_child(entry, [request["module"], *argv], fds, own, request.get("name"))
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        _send(sock, {"id": ident, "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)
    return pid


def _run_child(
    entry: Callable[[list[str]], None],
    argv: list[str],
    fds: list[int],
    own: tuple[int, ...],
    name: str | None = None,
) -> None:
    """In the forked child: run ``python -m module argv`` (``entry`` is its
    ``main``, ``argv[0]`` the module); never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in own:
            os.close(fd)
        os.setsid()  # its own session, as a spawned worker: no terminal Ctrl-C
        _reseed_numpy()
        if name:
            set_process_name(name)
        os.dup2(fds[0], 2)  # the cluster reads it (runtime/supervision.py)
        os.close(fds[0])
        sys.argv = argv
        entry(argv[1:])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _reseed_numpy() -> None:
    """A fork inherits numpy's global random state (``random`` reseeds itself
    at fork): without this every worker would draw the same numbers, where
    dask's, fresh interpreters, each draw their own."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()


def set_process_name(name: str) -> None:
    """Name the process in ``ps -o comm``/``top`` (its command line stays the
    template's): Linux keeps 15 bytes."""
    import ctypes  # imported by main already

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


_PR_SET_NAME = 15  # from <linux/prctl.h>


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
