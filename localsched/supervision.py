"""Supervision of worker processes: noticing deaths and explaining them.

Mixed into :class:`~localsched.runtime.SchedulerRuntime`; runs on the
scheduler thread. A worker's exit is seen through its process sentinel (or its
pipe's EOF); a worker that exits without having said goodbye crashed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from localsched.runtime_handles import WorkerClientHandle, WorkerHandle
from localsched.scheduler import events as ev

if TYPE_CHECKING:
    from localsched.runtime import SchedulerRuntime

logger = logging.getLogger("localsched.runtime")


class Supervision:
    """``SchedulerRuntime``'s handling of worker exits."""

    def _worker_exited(
        self: SchedulerRuntime, handle: WorkerHandle, events: list[ev.StateEvent]
    ) -> None:
        if self.workers.get(handle.address) is not handle:
            return
        handle.process.join(1.0)
        self.workers.pop(handle.address, None)
        with contextlib.suppress(OSError):
            handle.conn.close()
        expected = handle.said_goodbye or handle.restarting or self._stopping
        if not expected:
            handle.exit_reason = describe_exit(handle.process.exitcode)
            logger.warning(
                "Worker %s (pid %s) died: %s",
                handle.address,
                handle.pid,
                handle.exit_reason,
            )
        self.store.reclaim(handle.pid)
        for run_id in [
            i for i, run in self._runs.items() if handle.address in run.waiting
        ]:
            error = OSError(
                f"Worker {handle.address} left before answering Client.run"
                f" ({handle.exit_reason or 'it exited'})"
            )
            self._run_answered(run_id, handle.address, (False, error, ""))
        client_id = f"worker-client-{handle.address}"
        if isinstance(self.clients.get(client_id), WorkerClientHandle):
            del self.clients[client_id]
            events.append(
                ev.ClientRemoved(
                    stimulus_id=self.stimulus_id("client-removed"), client=client_id
                )
            )
        if handle.is_ready:
            events.append(
                ev.WorkerRemoved(
                    stimulus_id=self.stimulus_id("worker-removed"),
                    address=handle.address,
                    expected=expected,
                    reason=handle.exit_reason,
                    time=time.time(),
                )
            )
        if self.on_worker_exit is not None:
            self.on_worker_exit(handle, expected)


def describe_exit(exitcode: int | None) -> str:
    """Human words for a process exit status (negative: killed by a signal)."""
    import signal

    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        text = f"killed by {name}"
        if -exitcode == signal.SIGKILL:
            text += " (the out-of-memory killer, or a kill from outside)"
        elif -exitcode == signal.SIGSEGV:
            text += " (a segmentation fault in native code)"
        return text
    return f"exited with status {exitcode}"
