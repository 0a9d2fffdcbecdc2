"""What the scheduler thread makes of a task's outcome: the error of a result
the store refused, and a failed task's exception as the client raises it."""

from __future__ import annotations

import contextlib
import logging

import cloudpickle

from localsched.future_state import RemoteTraceback
from localsched.scheduler import commands as cmd
from localsched.scheduler import events as ev
from localsched.transport.pickling import loads_traceback
from localsched.transport.protocol import TaskDone

__all__ = ["exception_of", "result_not_adopted"]

logger = logging.getLogger("localsched.runtime.scheduler_thread")


def result_not_adopted(
    address: str, message: TaskDone, exc: Exception, stimulus_id: str
) -> ev.TaskErred:
    """The task's result cannot be held by the store (say, a segment outside its
    directories): the task errs with that reason, and the scheduler goes on."""
    logger.warning("Result of %r not kept: %s", message.key, exc)
    error = RuntimeError(
        f"The result of task {message.key!r} could not be kept by the"
        f" scheduler's shared-memory store: {exc}"
    )
    error.__cause__ = exc
    return ev.TaskErred(
        stimulus_id=stimulus_id,
        key=message.key,
        worker=address,
        run_id=message.run_id,
        exception=error,
        exception_text=repr(error),
        startstops=(("compute", message.start, message.stop),),
    )


def exception_of(command: cmd.KeyErred) -> tuple[BaseException, str]:
    """The task's exception, of its original type, with the remote traceback."""
    raw = command.exception
    text = command.traceback_text or ""
    if isinstance(raw, BaseException):
        exception = raw
    elif isinstance(raw, bytes | bytearray):
        try:
            exception = cloudpickle.loads(raw)
        except Exception as exc:
            exception = RuntimeError(
                f"The task raised {command.exception_text}, which could not be "
                f"unpickled in the client: {exc!r}"
            )
    else:
        exception = RuntimeError(command.exception_text or "the task failed")
    if isinstance(command.traceback, bytes):
        with contextlib.suppress(Exception):
            remote = loads_traceback(command.traceback)
            if remote is not None:
                exception = exception.with_traceback(remote)
    if text and exception.__cause__ is None:
        exception.__cause__ = RemoteTraceback(text)
    return exception, text
