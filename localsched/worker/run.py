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
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from localsched.transport import pickling
from localsched.transport.protocol import FunctionResult, RunFunction
from localsched.worker.execute import dumps_exception

__all__ = ["WorkerInfo", "call_function"]


@dataclass(frozen=True)
class WorkerState:
    """``dask_worker.state``: ``actors`` maps key -> actor object kept here."""

    actors: Mapping[Hashable, object] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerInfo:
    """What a ``dask_worker`` argument of ``Client.run`` gets here: the worker's
    ``address``, ``name``, ``nthreads``, ``pid``, ``status``, ``state.actors``
    and ``data``, which is always empty: results live in the scheduler's
    store, not in the worker that computed them."""

    address: str
    name: Any
    nthreads: int
    pid: int
    status: str = "running"
    state: WorkerState = field(default_factory=WorkerState)
    data: Mapping[Hashable, object] = field(
        default_factory=lambda: MappingProxyType({})
    )


def call_function(
    message: RunFunction,
    nthreads: int,
    actors: Mapping[Hashable, object] | None = None,
) -> FunctionResult:
    """Run the message's function; its result or exception, pickled.

    ``actors``: the worker's actor objects, for ``dask_worker.state.actors``.
    """
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
                message.address,
                message.name,
                nthreads,
                os.getpid(),
                state=WorkerState(MappingProxyType(dict(actors or {}))),
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
