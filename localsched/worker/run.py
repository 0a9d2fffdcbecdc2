"""``Client.run`` on the worker side: call a function outside task scheduling.

The control thread hands each :class:`~localsched.transport.protocol.RunFunction`
to a thread of its own (user code must never block the control loop); that
thread replies with a :class:`~localsched.transport.protocol.FunctionResult`.
"""

from __future__ import annotations

import inspect
import os
import pickle
import traceback
from dataclasses import dataclass
from typing import Any

from localsched.transport import pickling
from localsched.transport.protocol import FunctionResult, RunFunction
from localsched.worker.execute import dumps_exception

__all__ = ["WorkerInfo", "call_function"]


@dataclass(frozen=True)
class WorkerInfo:
    """What a ``dask_worker`` argument of ``Client.run`` gets here: the worker's
    ``address``, ``name``, ``nthreads``, ``pid`` and ``status``."""

    address: str
    name: Any
    nthreads: int
    pid: int
    status: str = "running"


def call_function(message: RunFunction, nthreads: int) -> FunctionResult:
    """Run the message's function; its result or exception, pickled."""
    try:
        function = pickle.loads(message.function)
        args, kwargs = pickle.loads(message.args)
        kwargs = dict(kwargs)
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        if "dask_worker" in parameters:
            kwargs["dask_worker"] = WorkerInfo(
                message.address, message.name, nthreads, os.getpid()
            )
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            import asyncio

            async def finish() -> Any:
                return await result

            result = asyncio.run(finish())
        payload = pickling.dumps(result, protocol=5)
    except BaseException as exc:
        error = dumps_exception(exc) or pickling.dumps(
            RuntimeError(f"{type(exc).__name__} (unpicklable)")
        )
        return FunctionResult(
            id=message.id,
            ok=False,
            payload=error,
            traceback_text="".join(traceback.format_exception(exc)),
        )
    return FunctionResult(id=message.id, ok=True, payload=payload)
