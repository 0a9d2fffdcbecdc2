"""``get_task_metadata``: the metadata and final state of a block's tasks
(dask's ``distributed.get_task_metadata``).

Entering the block sends ``StartTaskMetadata`` through the client's link,
leaving it ``StopTaskMetadata``; the collector is a scheduler plugin on the
scheduler thread (``localsched.runtime.task_metadata``). Through the link it
works inside a task too.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from typing import Any

from localsched.transport import requests as rq

__all__ = ["get_task_metadata"]


class get_task_metadata:
    """Collect task metadata within a context block.

    This gathers the metadata (``TaskState.metadata``, which scheduler plugins
    may fill; None if none did) and the final state (``"memory"`` or
    ``"erred"``) of the tasks submitted and finished within the block.

    Parameters
    ----------
    client : Client, optional
        Default: the task's client inside a task, else the default client.
        (dask's has no parameter and always uses ``get_client()``.)

    Attributes
    ----------
    metadata : dict or None
        Key -> its task's metadata, after the block.
    state : dict or None
        Key -> ``"memory"`` or ``"erred"``, after the block.

    Examples
    --------
    >>> with get_task_metadata() as tasks:  # doctest: +SKIP
    ...     x.compute()
    >>> tasks.metadata  # doctest: +SKIP
    {...}
    >>> tasks.state  # doctest: +SKIP
    {...}
    """

    def __init__(self, client: Any = None) -> None:
        self.name = f"task-metadata-{uuid.uuid4().hex}"
        self.keys: set[Hashable] = set()
        self.metadata: dict[Hashable, Any] | None = None
        self.state: dict[Hashable, str] | None = None
        self._client = client

    def _link(self) -> Any:
        if self._client is None:
            from localsched.client.task_client import get_client

            self._client = get_client()
        return self._client._link

    def __enter__(self) -> get_task_metadata:
        self._link().request(rq.StartTaskMetadata(name=self.name)).result()
        return self

    def __exit__(self, *exc: object) -> None:
        request = rq.StopTaskMetadata(name=self.name)
        response = self._link().request(request).result()
        self.metadata = response["metadata"]
        self.state = response["state"]
