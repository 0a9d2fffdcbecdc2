"""The default clients: ``default_client()`` and distributed's registry.

A client made with ``set_as_default=True`` (the default) is registered here
until it closes; ``default_client()`` gives the innermost ``as_current`` (or
``with``) block's client, else the most recently registered one, as dask's.

dask.distributed keeps the same registry (``distributed.client._global_clients``),
which dask itself reads through ``distributed.default_client()``, and which
libraries written for dask.distributed read too (``distributed.get_client()``,
``Client.current()``). When the program has imported ``distributed.client``, a
default localsched client is registered there as well, so that code finds it.
dask then also chooses its distributed-only defaults (the ``"p2p"`` shuffle of
dataframes and rechunking of arrays), which need distributed's own workers:
while a localsched client drives dask (``dask_collections.py``), dask's own
local defaults are set in its config instead, unless the program chose others.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from localsched.client.dask_collections import current_client_var

if TYPE_CHECKING:
    from localsched.client.client import Client

__all__ = ["default_client", "register_default", "unregister_default"]

_lock = threading.Lock()
#: Default clients by creation order, held weakly like dask's ``_global_clients``:
#: a client the program dropped is collected, and closes the cluster it started.
_defaults: weakref.WeakValueDictionary[int, Client] = weakref.WeakValueDictionary()
_index = itertools.count()


def register_default(client: Client) -> None:
    """Make ``client`` the default client (until :func:`unregister_default`)."""
    with _lock:
        _defaults[next(_index)] = client
    registry = sys.modules.get("distributed.client")
    if registry is not None:
        # distributed's own function: it sets ``_set_as_default`` and numbers
        # the entry after distributed's clients.
        with contextlib.suppress(Exception):
            registry._set_global_client(client)


def unregister_default(client: Client) -> None:
    """``client`` is no longer a default client (it closes)."""
    with _lock:
        for index, other in list(_defaults.items()):
            if other is client:
                del _defaults[index]
    registry = sys.modules.get("distributed.client")
    if registry is not None:
        with contextlib.suppress(Exception):
            registry._del_global_client(client)


def default_client(c: Client | None = None) -> Client:
    """``c``, else the client of the innermost ``as_current`` block, else the
    most recent client set as default.

    Raises
    ------
    ValueError
        There is none (dask's message).
    """
    if c is not None:
        return c
    current: Any = current_client_var.get()
    if current is not None and current.status == "running":
        return current
    with _lock:
        clients = sorted(_defaults.items())
    if clients:
        return clients[-1][1]
    raise ValueError(
        "No clients found\n"
        "Start a client and point it to the scheduler address\n"
        "  from distributed import Client\n"
        "  client = Client('ip-addr-of-scheduler:8786')\n"
    )
