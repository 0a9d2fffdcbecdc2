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

from localsched.lazy_exports import lazy_exports

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


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
