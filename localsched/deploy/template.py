"""The cluster's template process: workers forked from a pre-imported process.

A ``LocalCluster`` starts one template (a fork of the user's process where
that is safe, ``deploy/user_fork.py``, else ``python -m localsched.worker
--template``, started as a worker is, so what keys on a worker's command line
at start-up sees it; the code, its protocol and its lifetime are in
``localsched.worker.template``) first thing, so that it boots while the
cluster builds its scheduler and store, and asks
it for every worker process (the first ones, replacements, ``scale`` and
``adapt``) and for the janitor. A fork of the template is ready in a few
milliseconds where a fresh interpreter takes 0.1-0.2 s of CPU, so on a busy
machine the cluster starts one interpreter instead of one per worker, and a
scale-up starts in milliseconds.

Where the template cannot work (no ``os.fork`` or no ``pidfd_open``: not
Linux 5.3+), cannot start, dies, or does not answer, workers are started as
fresh interpreters (``processes.ChildProcess``) instead: the template only
ever saves time. ``LocalCluster(worker_start_method="spawn")`` (or dask's
config ``localsched.worker.start-method``) never uses it.

The template's boot (an interpreter and the worker's modules, about 0.1 s)
is the longest step of a cluster's start, so it starts as early as possible:
``Client()`` starts it before it even imports the cluster's modules
(:func:`template_ahead`; the imports and the cluster's construction then
overlap the boot on another core), and ``LocalCluster()`` first thing in its
constructor.

A forked process is not this process's child: :class:`ForkedProcess` gets its
exit code from the template's reports and watches it through a pidfd the
template passed, so it has ``ChildProcess``'s interface.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import itertools
import json
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

from localsched.deploy import user_fork
from localsched.deploy.processes import ChildProcess

logger = logging.getLogger("localsched.deploy.template")

__all__ = [
    "CONFIG_KEY",
    "ForkedProcess",
    "Template",
    "UserForkProcess",
    "resolve_start_method",
    "start_template",
    "take_template_ahead",
    "template_ahead",
]

#: dask config key read when ``worker_start_method`` is not given.
CONFIG_KEY = "localsched.worker.start-method"
START_METHODS = ("template", "spawn")
#: Seconds a fork request waits for the template (its start included) before
#: the cluster gives up on it and spawns instead.
FORK_TIMEOUT = 30.0
#: Seconds an exit code may take to arrive after the process ended.
EXIT_REPORT_TIMEOUT = 2.0


def is_supported() -> bool:
    """Whether this platform can run a template (fork, pidfds, fd passing)."""
    return (
        hasattr(os, "fork")
        and hasattr(os, "pidfd_open")
        and hasattr(socket, "send_fds")
        and hasattr(signal, "pidfd_send_signal")
        and sys.platform.startswith("linux")
    )


def resolve_start_method(method: str | None) -> str:
    """``worker_start_method``: given, else dask's config, else ``"template"``;
    ``"template"`` becomes ``"spawn"`` where templates are not supported."""
    if method is None:
        config = sys.modules.get("dask.config")
        method = "template" if config is None else config.get(CONFIG_KEY, "template")
    if method not in START_METHODS:
        raise ValueError(
            f"worker_start_method must be one of {START_METHODS}, got {method!r}"
        )
    if method == "template" and not is_supported():
        return "spawn"
    return method


def start_template(options: Mapping[str, Any] | None = None) -> Template | None:
    """A new template, or None (logged) if it cannot start: workers spawn.

    A fork of this process when that is safe (``deploy/user_fork.py``: its
    workers start with the user's modules imported), else a fresh interpreter.
    ``options`` are the cluster's keywords, if known.
    """
    reason = user_fork.refusal(options)
    if reason is None:
        try:
            return Template(fork_user=True)
        except Exception as exc:  # ENOMEM, EAGAIN: a fresh one may still start
            reason = f"the fork failed: {exc}"
    logger.debug("The worker template is a fresh interpreter: %s", reason)
    try:
        return Template()
    except Exception:
        logger.exception("Could not start the worker template: spawning workers")
        return None


#: The template :func:`template_ahead` started for the cluster being built in
#: this context (None once a cluster took it).
_ahead: contextvars.ContextVar[Template | None] = contextvars.ContextVar(
    "localsched_template_ahead", default=None
)


@contextlib.contextmanager
def template_ahead(options: Mapping[str, Any] | None) -> Iterator[None]:
    """Start a template now for the ``LocalCluster(**options)`` built in this
    block (which takes it: :func:`take_template_ahead`), so that its boot
    overlaps what comes before: ``Client()`` imports the cluster's modules in
    the block. A template no cluster took is closed at the block's end.

    Nothing starts for None (no cluster is built) nor for options that need
    no template (``processes=False``, ``asynchronous=True``,
    ``worker_start_method="spawn"``) or that the cluster will refuse (a bad
    start method: the cluster raises).
    """
    template = None
    if (
        options is not None
        and options.get("processes", True)
        and not options.get("asynchronous")
        and _resolves_to_template(options.get("worker_start_method"))
    ):
        template = start_template(options)
    token = _ahead.set(template)
    try:
        yield
    finally:
        if _ahead.get() is not None and template is not None:
            template.close()  # no cluster took it
        _ahead.reset(token)


def _resolves_to_template(method: Any) -> bool:
    try:
        return resolve_start_method(method) == "template"
    except (TypeError, ValueError):  # the cluster raises it
        return False


def take_template_ahead() -> Template | None:
    """The template :func:`template_ahead` started for this cluster, if any
    (once: the next cluster built in the block starts its own)."""
    template = _ahead.get()
    _ahead.set(None)
    return template


class TemplateError(RuntimeError):
    """The template could not fork: the caller spawns instead."""


class Template:
    """A running template process and our end of its socket.

    Thread-safe: the scheduler thread forks and watches workers while the
    closing thread joins them.
    """

    def __init__(self, fork_user: bool = False) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fd = theirs.fileno()
            self.process: ChildProcess | UserForkProcess
            if fork_user:
                self.process = UserForkProcess(user_fork.fork_template(theirs))
            else:
                self.process = ChildProcess(
                    [
                        "-m",
                        "localsched.worker",
                        "--template",
                        str(fd),
                        str(os.getpid()),
                    ],
                    pass_fds=(fd,),
                    name="localsched-template",
                )
            #: Whether it is a fork of this process (it has our modules).
            self.is_user_fork = fork_user
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._ids = itertools.count()
        #: Request id -> (pid, pidfd) or the error text; taken by the requester.
        self._replies: dict[int, tuple[int, int] | str] = {}
        #: Exit code of each forked process that ended, by pid.
        self._exits: dict[int, int] = {}
        #: The template is gone or misbehaved: fork no more.
        self.is_broken = False
        #: The cluster is closing: the template's end is no news.
        self.is_closing = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def fork(
        self, module: str, argv: list[Any], fds: list[int], name: str
    ) -> ForkedProcess:
        """Fork a child running ``python -m module argv`` (an ``{"fd": i}``
        item is the i-th of ``fds`` in the child; ``fds[0]`` is its stderr).

        Raises
        ------
        TemplateError
            The template is broken or refused; nothing was started.
        """
        if self.is_broken:
            raise TemplateError("the template process is gone")
        ident = next(self._ids)
        request = {"id": ident, "module": module, "argv": argv, "name": name}
        message = json.dumps(request).encode()
        deadline = time.monotonic() + FORK_TIMEOUT
        with self._lock:
            try:
                socket.send_fds(self._sock, [message], fds)
            except OSError as exc:
                self._break(f"cannot reach it: {exc}")
                raise TemplateError("the template process is gone") from exc
            while ident not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._break(f"no answer within {FORK_TIMEOUT} s")
                    break
                if not self._receive(remaining):
                    break
            reply = self._replies.pop(ident, "the template process is gone")
        if isinstance(reply, str):
            raise TemplateError(reply)
        pid, pidfd = reply
        return ForkedProcess(self, pid, pidfd, name)

    def warm(self, names: list[str], quiet: float) -> None:
        """Have the template import ``names`` once no request came for
        ``quiet`` seconds, so that later forks inherit them (warm imports:
        ``localsched.worker.template.TemplateWarmUp``). No answer."""
        if self.is_broken or not names:
            return
        message = json.dumps({"warm": names, "quiet": quiet}).encode()
        with self._lock:
            try:
                self._sock.send(message)
            except OSError as exc:
                self._break(f"cannot reach it: {exc}")

    def _receive(self, timeout: float) -> bool:
        """Read the template's messages for up to ``timeout`` seconds (under
        ``_lock``); False once it is gone."""
        if self.is_broken:
            return False
        readable = _is_readable(self._sock.fileno(), timeout)
        while readable:
            try:
                data, fds, _flags, _address = socket.recv_fds(self._sock, 1 << 16, 1)
            except BlockingIOError:
                break
            except OSError as exc:
                self._break(f"cannot read from it: {exc}")
                return False
            if not data:
                self._break("it exited")
                return False
            for fd in fds:
                os.set_inheritable(fd, False)
            self._on_message(json.loads(data), fds)
            readable = _is_readable(self._sock.fileno(), 0.0)
        return True

    def _on_message(self, message: dict[str, Any], fds: list[int]) -> None:
        if "exited" in message:
            self._exits[int(message["exited"])] = int(message["code"])
        elif "error" in message:
            self._replies[message["id"]] = str(message["error"])
        else:
            self._replies[message["id"]] = (int(message["pid"]), fds[0])

    def exit_code(self, pid: int, timeout: float = 0.0) -> int | None:
        """The exit code of forked process ``pid`` if the template reported it,
        waiting up to ``timeout`` seconds for the report."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._receive(0.0)
                code = self._exits.get(pid)
                remaining = deadline - time.monotonic()
                if code is not None or remaining <= 0 or self.is_broken:
                    return code
                self._receive(min(remaining, 0.05))

    def _break(self, reason: str) -> None:
        if not self.is_broken:
            self.is_broken = True
            log = logger.debug if self.is_closing else logger.warning
            log(
                "Worker template process (pid %d) failed (%s): new workers "
                "start as fresh interpreters",
                self.pid,
                reason,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the template (at its socket's EOF) and wait for it."""
        with self._lock:
            self.is_broken = True
            with contextlib.suppress(OSError):
                self._sock.close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)


class _PidfdProcess(abc.ABC):
    """A process watched and signalled through a pidfd, with ``ChildProcess``'s
    interface; subclasses say where its exit code comes from."""

    def __init__(self, pid: int, pidfd: int, name: str) -> None:
        self.name = name
        self.pid = pid
        self._pidfd: int | None = pidfd
        self._exitcode: int | None = None
        #: Our end of the child's stderr pipe (non-blocking), or None.
        self.stderr: IO[bytes] | None = None

    @property
    def sentinel(self) -> int | None:
        """A file descriptor readable once the process exited."""
        return self._pidfd

    def _has_ended(self, timeout: float | None = 0.0) -> bool:
        pidfd = self._pidfd
        return pidfd is None or _is_readable(pidfd, timeout)

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is None and self._has_ended():
            self._exitcode = self._ended_code()
        return self._exitcode

    @abc.abstractmethod
    def _ended_code(self) -> int | None:
        """The exit code of the process, which ended (None: not known yet)."""

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self._has_ended(timeout):
            self.exitcode  # noqa: B018  (the exit code, while it can be had)
            pidfd, self._pidfd = self._pidfd, None
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(pidfd)

    def _signal(self, signum: int) -> None:
        pidfd = self._pidfd
        if pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(pidfd, signum)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)


class ForkedProcess(_PidfdProcess):
    """A process the template forked: its exit code is the template's report."""

    def __init__(self, template: Template, pid: int, pidfd: int, name: str) -> None:
        super().__init__(pid, pidfd, name)
        self._template = template

    def _ended_code(self) -> int:
        code = self._template.exit_code(self.pid, EXIT_REPORT_TIMEOUT)
        # No report: the template died first, and its death killed its
        # workers (PR_SET_PDEATHSIG).
        return -signal.SIGKILL if code is None else code


class UserForkProcess(_PidfdProcess):
    """A template forked from this process (``deploy/user_fork.py``): our
    child, so we reap it."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid, os.pidfd_open(pid), "localsched-template")

    def _ended_code(self) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else's waitpid(-1)
            return -signal.SIGKILL
        return os.waitstatus_to_exitcode(status) if pid else None


def _is_readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable (or hung up) within ``timeout`` seconds (None:
    no limit). ``poll``, not ``select``: the user's process may hold more than
    ``FD_SETSIZE`` (1024) descriptors."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    wait = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return bool(poller.poll(wait))
