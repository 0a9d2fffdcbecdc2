"""The client side: ``Client``, ``Future`` and everything built on them.

A :class:`Client` talks to the scheduler thread only through a
:class:`~localsched.client.link.SchedulerLink` (a ``LocalLink`` in the process
running the cluster, a ``PipeLink`` inside a task), so every method works the
same in both places. Here too: futures and ``wait``/``as_completed``, the
coordination primitives, graph building (including dask collections),
datasets, plugins through the client, introspection and the executor.

Names are exported as ``distributed.client`` exports them, imported on first
use (PEP 562) so that a submodule such as ``link`` loads without the client.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": "localsched.client.client",
    "ClosedClientError": "localsched.errors",
    "Future": "localsched.client.future",
    "FutureCancelledError": "localsched.client.future",
    "as_completed": "localsched.client.future",
    "default_client": "localsched.client.client",
    "fire_and_forget": "localsched.client.client",
    "futures_of": "localsched.client.future",
    "wait": "localsched.client.future",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
