"""Supervision of worker processes: noticing deaths and explaining them.

Mixed into :class:`~localsched.runtime.scheduler_thread.SchedulerRuntime`; runs on the
scheduler thread. A worker's exit is seen through its process sentinel (or its
pipe's EOF); a worker that exits without having said goodbye crashed. Then:

- only the tasks it was *executing* are counted suspicious (read from its
  :class:`~localsched.transport.executing.ExecutingPage`; tasks merely queued
  in it are placed again), so a poison task, not its neighbours, ends in
  ``KilledWorker`` after ``allowed_failures`` deaths;
- its death is explained in words (:func:`explain_death`): exit status or
  signal, the likely cause (a SIGKILL localsched did not send is most likely
  the out-of-memory killer; the cgroup's OOM-kill counter confirms it where
  readable), ``WorkerHandle.exit_cause`` if whoever killed it gave one, and
  the last lines it printed to stderr;
- ``LocalCluster`` is told (``on_worker_exit``) and starts a replacement.

A worker's stderr is a non-blocking pipe read on this thread when it is
readable (:class:`StderrRelay`): the text goes on to the user's ``sys.stderr``
and its last lines are kept. Reading here rather than in a thread of its own
means the tail is complete when the death is handled: the pipe is drained to
its end before the explanation is written.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Hashable, Iterable
from typing import IO, TYPE_CHECKING

from localsched.runtime.handles import WorkerClientHandle, WorkerHandle
from localsched.scheduler import events as ev

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

logger = logging.getLogger("localsched.runtime.scheduler_thread")

#: Lines of a worker's stderr kept for the explanation of its death.
TAIL_LINES = 20
#: Characters kept of one line of it.
TAIL_LINE_CHARS = 400
#: Where the kernel counts OOM kills: cgroup v2, then v1.
_OOM_COUNTERS = (
    "/sys/fs/cgroup/memory.events",
    "/sys/fs/cgroup/memory/memory.oom_control",
)


def worker_exited(
    runtime: SchedulerRuntime, handle: WorkerHandle, events: list[ev.StateEvent]
) -> None:
    """A worker process ended: forget it, say why, and tell the core."""
    if runtime.workers.get(handle.address) is not handle:
        return
    handle.process.join(1.0)
    runtime.workers.pop(handle.address, None)
    with contextlib.suppress(OSError):
        handle.conn.close()
    relay = handle.stderr_relay
    if relay is not None:
        relay.pump(max_reads=1024)  # the last lines it wrote before dying
        relay.close()
    expected = handle.said_goodbye or handle.restarting or runtime._stopping
    executing: list[Hashable] | None = None
    if not expected or handle.exit_cause:
        if not expected:
            executing = executing_keys(runtime, handle)
            handle.executing_at_exit = executing
        oom_killed = oom_kills_grew(runtime)
        handle.exit_reason = explain_death(handle, oom_killed=oom_killed)
        # Its stderr reached the user's stderr as it was written (the relay):
        # the log names the cause once and does not quote it again.
        logger.warning(
            "%s%s",
            explain_death(handle, oom_killed=oom_killed, quote_stderr=False),
            "" if executing is None else f"\nIt was executing {executing!r}.",
        )
    if handle.executing_page is not None:
        handle.executing_page.close()
    runtime.store.reclaim(handle.holder)
    for run_id in [
        i for i, run in runtime.runs.pending.items() if handle.address in run.waiting
    ]:
        error = OSError(
            f"Worker {handle.address} left before answering Client.run"
            f" ({handle.exit_reason or 'it exited'})"
        )
        runtime.runs.answered(run_id, handle.address, (False, error, ""))
    actor_calls = getattr(runtime, "_actor_calls", None)
    if actor_calls is not None:
        actor_calls.worker_left(handle.address, handle.exit_reason)
    client_id = f"worker-client-{handle.address}"
    if isinstance(runtime.clients.get(client_id), WorkerClientHandle):
        del runtime.clients[client_id]
        events.append(
            ev.ClientRemoved(
                stimulus_id=runtime.stimulus_id("client-removed"), client=client_id
            )
        )
    if handle.is_ready:
        message = {
            "action": "remove-worker",
            "processing-tasks": executing or [],
            "expected": expected,
            "reason": handle.exit_reason or "said goodbye",
        }
        runtime.scheduler.log_event(handle.address, dict(message))
        runtime.scheduler.log_event("all", {**message, "worker": handle.address})
        events.append(
            ev.WorkerRemoved(
                stimulus_id=runtime.stimulus_id("worker-removed"),
                address=handle.address,
                expected=expected,
                reason=handle.exit_reason,
                executing=executing,
                time=time.time(),
            )
        )
    if runtime.recorder is not None:
        runtime.recorder.worker_exited(handle, expected)
    if runtime.on_worker_exit is not None:
        runtime.on_worker_exit(handle, expected)


def executing_keys(
    runtime: SchedulerRuntime, handle: WorkerHandle
) -> list[Hashable] | None:
    """Keys the dead worker was executing; None if it cannot be known."""
    page = handle.executing_page
    ws = runtime.scheduler.state.workers.get(handle.address)
    if page is None or ws is None:
        return None
    run_ids = page.executing()
    if run_ids is None:
        return None
    return [ts.key for ts in ws.processing if ts.run_id in run_ids]


def oom_kills_grew(runtime: SchedulerRuntime) -> bool:
    """Did the kernel's OOM killer act in our cgroup since the last look?"""
    count = read_oom_kills()
    grew = count is not None and count > runtime.oom_kills_seen
    if count is not None:
        runtime.oom_kills_seen = count
    return grew


def close_stderr_relays(runtime: SchedulerRuntime) -> None:
    """At the end of the loop: forward what is left, close the pipes."""
    for handle in runtime.workers.values():
        relay = handle.stderr_relay
        if relay is not None:
            relay.pump()
            relay.close()


class StderrRelay:
    """Forwards a worker's stderr to the user's and keeps its last lines.

    Parameters
    ----------
    stream
        Our end of the worker's stderr pipe, non-blocking.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.fd = stream.fileno()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = ""
        self.is_closed = False

    def pump(self, max_reads: int = 16) -> bool:
        """Forward what is readable now, at most ``max_reads`` chunks of 64 KiB
        (a worker printing without pause must not hold the scheduler thread);
        True at end of file."""
        if self.is_closed:
            return True
        for _ in range(max_reads):
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            text = self._decoder.decode(data)
            _write_user_stderr(text)
            self._keep(text)
        return False

    def _keep(self, text: str) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        self._partial = self._partial[-TAIL_LINE_CHARS:]
        for line in complete[-TAIL_LINES:]:
            self._lines.append(line[:TAIL_LINE_CHARS])

    def tail(self) -> list[str]:
        """The last lines it printed (an unfinished last line included)."""
        lines = list(self._lines)
        if self._partial:
            lines.append(self._partial)
        return [line for line in lines[-TAIL_LINES:] if line.strip()]

    def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            with contextlib.suppress(OSError):
                self._stream.close()


def _write_user_stderr(text: str) -> None:
    # sys.stderr, not file descriptor 2: in a notebook the kernel replaces
    # sys.stderr, and the user sees the workers' output in the cell.
    stream = sys.stderr
    if stream is None:
        return
    with contextlib.suppress(Exception):
        stream.write(text)
        stream.flush()


def read_oom_kills() -> int | None:
    """The cgroup's count of processes the OOM killer ended (None: unreadable)."""
    for path in _OOM_COUNTERS:
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def explain_death(
    handle: WorkerHandle, oom_killed: bool = False, quote_stderr: bool = True
) -> str:
    """Why a worker died, in words, for the log and ``KilledWorker``.

    ``quote_stderr``: end with the last lines it wrote to stderr; otherwise
    (the log: they were relayed to the user's stderr already) say they are
    above.
    """
    exitcode = handle.process.exitcode
    text = f"Worker {handle.address} (pid {handle.pid}) {describe_exit(exitcode)}"
    if handle.exit_cause:
        text += f": {handle.exit_cause}."
    elif oom_killed:
        text += (
            ": the kernel's out-of-memory killer ended a process of this cgroup "
            "just now, so the machine most likely ran out of memory."
        )
    elif exitcode == -signal.SIGKILL and not handle.restarting:
        text += (
            ". localsched did not send that signal: most likely the kernel's "
            "out-of-memory killer ended it (the machine ran out of memory; see "
            "`dmesg`), or something outside killed it."
        )
    elif exitcode is not None and exitcode == -signal.SIGSEGV:
        text += ": a segmentation fault, in native code the task called."
    else:
        text += "."
    if not handle.is_ready:
        text += " It died while starting, before it could run any task."
    tail = [] if handle.stderr_relay is None else handle.stderr_relay.tail()
    if tail and not quote_stderr:
        text += " What it printed to stderr is above."
    elif tail:
        text += " The last lines it printed to stderr:\n" + "\n".join(
            f"    {line}" for line in tail
        )
    return text


def describe_exit(exitcode: int | None) -> str:
    """Human words for a process exit status (negative: killed by a signal)."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with status {exitcode}"


class RestartPolicy:
    """When ``LocalCluster`` replaces a crashed worker, and when it gives up.

    A worker that crashes while running tasks is replaced at once: a task that
    keeps killing workers is stopped by ``KilledWorker`` after
    ``allowed_failures``, which bounds that loop. A death is *unstable* if the
    worker died while starting (before its hello: a broken environment, a crash
    on import) or within ``min_uptime`` seconds of its start while executing
    nothing (a worker plugin or preload that crashes it, say): its replacement
    would likely die the same way. After the n-th unstable death in a row the
    replacement waits ``base_delay * 2**(n-1)`` seconds (at most
    ``max_delay``), and after ``max_start_failures`` deaths while starting the
    cluster stops replacing workers and reports why (:attr:`failure`, with the
    last lines the worker printed). A worker that has run for ``min_uptime``
    since the last unstable death resets the counts.
    """

    base_delay = 0.1
    max_delay = 5.0
    max_start_failures = 5
    min_uptime = 2.0

    def __init__(self) -> None:
        #: Workers that died while starting, since the last stable one.
        self.start_failures = 0
        #: Unstable deaths since the last stable worker.
        self.unstable = 0
        #: time.monotonic() of the last unstable death.
        self._last_unstable = -float("inf")
        #: Why the cluster stopped replacing workers; None while it does.
        self.failure: str | None = None

    def delay_after(
        self, handle: WorkerHandle, others: Iterable[WorkerHandle] = ()
    ) -> float | None:
        """Seconds to wait before replacing ``handle``; None: do not replace.

        ``others`` are the cluster's workers still alive.
        """
        if self.failure is not None:
            return None
        now = time.monotonic()
        if any(
            w.is_ready and self._last_unstable < w.started <= now - self.min_uptime
            for w in others
        ):
            self.start_failures = self.unstable = 0  # the environment works
        if not handle.is_ready:
            self.start_failures += 1
        elif not (
            now - handle.started < self.min_uptime and handle.executing_at_exit == []
        ):
            self.start_failures = self.unstable = 0
            return 0.0
        self.unstable += 1
        self._last_unstable = now
        if self.start_failures >= self.max_start_failures:
            self.failure = (
                f"{self.start_failures} worker processes in a row died while "
                "starting; localsched stopped starting new ones. The last one: "
                f"{handle.exit_reason or explain_death(handle)}"
            )
            logger.error("%s", self.failure)
            return None
        return min(self.max_delay, self.base_delay * 2 ** (self.unstable - 1))

    def check(self) -> None:
        """Raise ``RuntimeError`` if the cluster gave up starting workers."""
        if self.failure is not None:
            raise RuntimeError(self.failure)
